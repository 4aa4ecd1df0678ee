"""The GGUF quants edgerank makes, serves and names: written once, read by the catalog, the
planner, the store, the converter and the gguf backends.

Each quant is a llama_ftype (a GGUF's general.file_type, and what llama_model_quantize is
asked for). Their roles: `import --backend gguf` makes f16 (the converter's) and the two
quantized files; the planner chooses among the quantized ones the catalog gives a memory
figure for; an entry opens q8_0 unless asked otherwise; fidelity is measured against the
most precise file an entry holds. A GGUF brought from elsewhere may be of any other ftype:
NAMES names it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Quant:
    name: str
    #: llama_ftype: general.file_type in a GGUF, and llama_model_quantize's target
    ftype: int
    #: written by `edgerank import --backend gguf` (f16 by the converter, the rest quantized)
    made: bool
    #: a precision the planner may choose (the catalog gives its memory)
    served: bool


#: most precise first
QUANTS = (
    Quant("f32", 0, made=False, served=False),
    Quant("f16", 1, made=True, served=False),
    Quant("q8_0", 7, made=True, served=True),
    Quant("q4_k_m", 15, made=True, served=True),
)
BY_NAME = {q.name: q for q in QUANTS}
#: most precise first: the reference an entry's other files are measured against
PRECISE_FIRST = tuple(q.name for q in QUANTS)
#: what `import --backend gguf` writes (also the quants a catalog entry may publish)
MADE = tuple(q.name for q in QUANTS if q.made)
#: what the planner may choose, preferred first
SERVED = tuple(q.name for q in QUANTS if q.served)
#: the file an entry opens when no precision is asked for: the preferred served quant, else
#: f16 (a catalog model published in f16 only), else the rest; f32 (a converter's base,
#: kept only when asked for) last
OPEN_ORDER = ("q8_0", "f16", "q4_k_m", "f32")

#: llama_ftype -> name, for any GGUF a user brings (llama.h's LLAMA_FTYPE_MOSTLY_*)
NAMES = {
    **{q.ftype: q.name for q in QUANTS},
    2: "q4_0", 3: "q4_1", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k_s", 12: "q3_k_m",
    13: "q3_k_l", 14: "q4_k_s", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k", 32: "bf16",
}  # fmt: skip


def name_of(ftype: object) -> str:
    """A GGUF's general.file_type as a precision name ("ftypeN" when llama.h has none)."""
    return NAMES.get(ftype, f"ftype{ftype}") if isinstance(ftype, int) else f"ftype{ftype}"
