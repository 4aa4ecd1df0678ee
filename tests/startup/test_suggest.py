"""The next step suggested to a box on the fallback: a command that runs on its install and
a model that suits its CPU, memory and int8 kernel."""

from __future__ import annotations

import pytest

from edgerank.catalog.load import load_catalog
from edgerank.planning.candidates import Wishes
from edgerank.planning.choice import choose
from edgerank.planning.memory import compute_cost
from edgerank.startup import suggest as sg
from tests.support.hardware import avx2_machine

BASE = frozenset()  # `pip install edgerank`: no extras
EVERYTHING = frozenset({"quantize", "convert", "gguf"})


def _fallback(hardware, languages=("en",)):
    catalog = load_catalog()
    wishes = Wishes(languages=languages)
    current = choose(catalog, hardware, wishes, installed_backends={"onnx", "biencoder"},
                     installed_models={})  # fmt: skip
    assert current.model.kind == "bi-encoder"
    return catalog, wishes, current


def _suggest(hardware, extras, languages=("en",)):
    catalog, wishes, current = _fallback(hardware, languages)
    return catalog, sg.suggest(catalog, hardware, wishes, current, extras)


@pytest.mark.parametrize(
    ("isa", "kernel_file"),
    [
        (frozenset({"avx2"}), "onnx/model_quint8_avx2.onnx"),
        (frozenset({"avx2", "avx512f", "avx512_vnni"}), "onnx/model_qint8_avx512.onnx"),
        (frozenset({"asimddp"}), "onnx/model_qint8_arm64.onnx"),
    ],
)
def test_a_base_install_is_told_a_prebuilt_file_made_for_its_int8_kernel(isa, kernel_file):
    hw = avx2_machine(isa=isa)
    catalog, found = _suggest(hw, BASE)
    assert found is not None
    assert found.command == f"edgerank pull {found.model} --prebuilt-int8"
    spec = catalog.get(found.model)
    ready = spec.onnx.int8_file_for(sg.int8_kernel(isa))
    assert ready and (sg.int8_kernel(isa) not in sg.SATURATING_INT8 or ready == kernel_file)
    # small: within what two cores score quickly, not the 570 MB bge-reranker-v2-m3
    assert compute_cost(spec) <= sg.CPU_MMAC_PER_CORE * 2
    assert "measured against its FP32 file" in found.why


def test_the_suggestion_grows_with_the_cpu_and_shrinks_with_memory():
    small = _suggest(avx2_machine(isa=frozenset({"avx2"})), EVERYTHING)[1]
    big = _suggest(avx2_machine(usable_cpus=32.0, physical_cores=32), EVERYTHING)[1]
    catalog = load_catalog()
    assert compute_cost(catalog.get(big.model)) > compute_cost(catalog.get(small.model))
    tight = _suggest(avx2_machine(usable_cpus=32.0, physical_cores=32, ram_available_mib=700,
                                  ram_total_mib=1000), EVERYTHING)[1]  # fmt: skip
    assert catalog.get(tight.model).memory_mib["int8"] < catalog.get(big.model).memory_mib["int8"]


def test_with_the_quantize_extra_edgeranks_recipe_comes_first():
    _, found = _suggest(avx2_machine(), frozenset({"quantize"}))
    assert found.command == f"edgerank pull {found.model}"  # quantized here, measured
    assert "quantized here" in found.why


def test_where_no_route_is_open_the_extra_is_named_in_the_command():
    """Chinese on a base install: every zh reranker needs an extra to get here."""
    _, found = _suggest(avx2_machine(), BASE, languages=("zh",))
    assert found is not None
    assert (
        found.command.startswith("pip install 'edgerank[") and " && edgerank pull " in found.command
    )


def test_pull_hints_name_the_command_this_install_runs():
    catalog = load_catalog()
    spec = catalog.get("ms-marco-minilm-l6")
    assert (
        sg.pull_hint(spec, "onnx", "avx2", BASE) == f"`edgerank pull {spec.name} --prebuilt-int8`"
    )
    assert sg.pull_hint(spec, "onnx", "avx2", EVERYTHING) == f"`edgerank pull {spec.name}`"
    assert sg.pull_hint(spec, "gguf", "avx2", BASE) == (
        f"`pip install 'edgerank[convert,gguf]' && edgerank pull {spec.name} --backend gguf`"
    )


def test_a_better_model_is_suggested_only_when_better():
    catalog = load_catalog()
    hw = avx2_machine()
    wishes = Wishes()
    installed = {"ms-marco-tinybert-l2": ["onnx"]}
    current = choose(catalog, hw, wishes, installed_backends={"onnx", "biencoder"},
                     installed_models=installed)  # fmt: skip
    better = sg.suggest(catalog, hw, wishes, current, BASE)
    assert better is not None and catalog.get(better.model).quality["en"] > 44.7
    everything = dict.fromkeys(catalog.names())  # every model installed, every runtime too
    top = choose(catalog, hw, wishes, installed_backends={"onnx", "gguf", "biencoder"},
                 installed_models=everything)  # fmt: skip
    assert sg.suggest(catalog, hw, wishes, top, EVERYTHING) is None
