"""An import the box cannot hold is refused before it starts, in one line that names the
route that can (quantize on a bigger box, carry the archive)."""

from __future__ import annotations

from click.testing import CliRunner

from edgerank.cli.main import main
from edgerank.hardware import probe
from edgerank.planning.memory import import_need_mib
from tests.support.hardware import avx2_machine


def _box(monkeypatch, free_mib: int) -> None:
    monkeypatch.setattr(probe, "probe", lambda *a, **kw: avx2_machine(ram_available_mib=free_mib))


def test_an_import_this_box_cannot_hold_is_refused_before_it_starts(
    tiny_bert_hf, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    monkeypatch.setenv("EDGERANK_HOME", str(home))
    need = import_need_mib(1.0, export=True)  # the tiny checkpoint: the fixed part dominates
    _box(monkeypatch, need - 100)
    done = CliRunner().invoke(main, ["import", str(tiny_bert_hf), "--name", "tiny"])
    assert done.exit_code != 0
    lines = [ln for ln in done.output.splitlines() if ln.strip()]
    assert len(lines) == 1, done.output
    assert "MiB" in lines[0] and "edgerank export tiny" in lines[0], lines[0]
    assert "edgerank import tiny.tar" in lines[0] and "Traceback" not in done.output
    assert not (home / "models" / "tiny").exists()  # nothing started, nothing left


def test_the_need_grows_with_the_graph_and_with_an_export():
    small, large = import_need_mib(90), import_need_mib(1100)
    assert small < large
    assert import_need_mib(1100, export=True) >= large
