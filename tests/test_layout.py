"""The import contract: imports run one way, as the tree reads, and serving never loads the
installer. Read from the source (function-level imports count: they run too), so a knot
between packages fails here before anyone has to untie it again."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgerank"

#: the serving side, top to bottom: a package imports only from layers below its own
SERVING = (
    ("__main__", "testing"),
    ("cli",),
    ("client",),
    ("server",),
    ("startup",),
    ("engine",),
    ("backends",),
    ("store",),
    ("models",),
    ("planning",),
    ("hardware", "catalog"),
    ("errors", "proto"),
)
#: the install side, beside it: store installs -> convert -> quality, each of which may use
#: the serving core from the engine down (it scores with backends, replays the cascade)
INSTALL = ("install", "convert", "quality")
#: who may import the install side at all (function-level, in the commands that install)
INSTALL_USERS = {"cli", "testing", *INSTALL}


def _rank() -> dict[str, float]:
    rank: dict[str, float] = {}
    for i, layer in enumerate(SERVING):
        for name in layer:
            rank[name] = i
    engine = rank["engine"]
    for j, name in enumerate(INSTALL):  # between the faces and the engine, in their own order
        rank[name] = engine - 1 + (j + 1) / (len(INSTALL) + 1)
    return rank


def _package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "edgerank" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every edgerank import in a file, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return [(m, line) for m, line in out if m.startswith("edgerank.")]


def _edges() -> list[tuple[str, str, str]]:
    """(importing package, imported package, where) for every import across packages."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] == "proto":
            continue
        src = rel.parts[1] if len(rel.parts) > 2 else rel.stem
        for module, line in _imports(path):
            dst = _package(module)
            if dst and dst != src and dst not in ("__init__", "__version__"):
                edges.append((src, dst, f"{rel}:{line} imports {module}"))
    return edges


def test_every_package_has_a_place_in_the_contract():
    known = set(_rank())
    here = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    here |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert here - known == set(), "a new package needs a layer in tests/test_layout.py"


def test_imports_run_one_way():
    rank = _rank()
    wrong = [
        where
        for src, dst, where in _edges()
        if src in rank and dst in rank and rank[dst] <= rank[src]
    ]
    assert wrong == [], "imports that climb back up:\n" + "\n".join(wrong)


def test_serving_never_imports_the_install_side():
    wrong = [where for src, dst, where in _edges() if dst in INSTALL and src not in INSTALL_USERS]
    assert wrong == [], "\n".join(wrong)


def test_the_contract_catches_a_climb(tmp_path, monkeypatch):
    """The check itself: an engine module importing the server is reported."""
    fake = tmp_path / "edgerank" / "engine"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("def f():\n    from edgerank.server.settings import Settings\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "edgerank")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert [(s, d) for s, d, _ in _edges()] == [("engine", "server")]


SERVING_PATH = """
import json, sys
from pathlib import Path
from click.testing import CliRunner
from edgerank.cli.main import main

result = CliRunner().invoke(main, ["score", "--model", sys.argv[1], "a query", "a passage"])
assert result.exit_code == 0, result.output
from edgerank.server import daemon, http
from edgerank.server.settings import Settings

opened = daemon.load_backend(Settings(model=sys.argv[1], home=sys.argv[2]))
opened.backend.close()
print(json.dumps(sorted(m for m in sys.modules if m.startswith("edgerank."))))
"""


@pytest.mark.slow
def test_score_and_serve_load_no_installer_module(tiny_onnx_dir, tmp_path):
    """`edgerank score` and the daemon's start-up path, run for real on a model entry, load
    nothing of the install side (quantizer, converters, install pipelines, quality harness)."""
    out = subprocess.run(
        [sys.executable, "-c", SERVING_PATH, str(tiny_onnx_dir), str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )  # fmt: skip
    import json

    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "edgerank.startup.load" in loaded and "edgerank.backends.onnx" in loaded
    install_side = [m for m in loaded if _package(m) in INSTALL]
    assert install_side == []
