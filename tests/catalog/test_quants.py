"""The GGUF quant table: its ftypes are llama.cpp's own, and each role list derives from it."""

from __future__ import annotations

import pytest

from edgerank.catalog import quants


def test_ftypes_are_llama_cpp_s():
    llama_cpp = pytest.importorskip("llama_cpp")
    want = {
        "f32": llama_cpp.LLAMA_FTYPE_ALL_F32,
        "f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16,
        "bf16": llama_cpp.LLAMA_FTYPE_MOSTLY_BF16,
        "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
        "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
        "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
        "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
        "q6_k": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
    }
    assert {name: quants.NAMES[ftype] for name, ftype in want.items()} == {n: n for n in want}


def test_roles_come_from_the_one_table():
    assert quants.PRECISE_FIRST == ("f32", "f16", "q8_0", "q4_k_m")
    assert set(quants.MADE) <= set(quants.PRECISE_FIRST)
    assert set(quants.SERVED) <= set(quants.MADE)
    assert sorted(quants.OPEN_ORDER) == sorted(quants.PRECISE_FIRST)
    assert quants.OPEN_ORDER[0] == quants.SERVED[0]
    assert quants.name_of(15) == "q4_k_m" and quants.name_of(99) == "ftype99"
    assert quants.name_of(None) == "ftypeNone"
