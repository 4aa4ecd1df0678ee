"""How an installed entry scores: its kind, its max length and, for an LLM reranker, its prompt
and score rule. A manifest's recipe keeps it; each runtime adds what it needs (torch: whether
the checkpoint ships modelling code; gguf: the file of each quant)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from edgerank.errors import ModelCorrupt
from edgerank.models.llm_format import LlmFormat

DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True)
class EntryFormat:
    kind: str
    max_length: int = DEFAULT_MAX_LENGTH
    llm: LlmFormat | None = None

    #: the runtime it is for, the kinds that runtime serves, the recipe name it writes
    RUNTIME: ClassVar[str] = ""
    SERVES: ClassVar[tuple[str, ...]] = ()
    RECIPE: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.kind not in self.SERVES:
            raise ValueError(
                f"{self.RUNTIME} cannot serve {self.kind!r} models (only {', '.join(self.SERVES)})"
            )
        if (self.kind != "cross-encoder") != (self.llm is not None):
            raise ValueError("LLM rerankers need an LlmFormat, cross-encoders none")

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], max_length: int) -> Any:
        try:
            return cls(
                recipe["kind"], max_length, LlmFormat.from_recipe(recipe), **cls._read(recipe)
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelCorrupt(f"{cls.RUNTIME} entry recipe is incomplete: {exc}") from exc

    def to_recipe(self) -> dict[str, Any]:
        llm = self.llm.to_dict() if self.llm else None
        return {"name": self.RECIPE, "kind": self.kind, "llm": llm, **self._written()}

    @classmethod
    def _read(cls, recipe: dict[str, Any]) -> dict[str, Any]:
        """The runtime's own recipe fields, as constructor arguments."""
        return {}

    def _written(self) -> dict[str, Any]:
        return {}
