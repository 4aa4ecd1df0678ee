"""How an LLM reranker is prompted and scored: recorded in the catalog and in store entries, read
by every runtime that serves one (backends/llm.py tokenizes with it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgerank.catalog.spec import ModelSpec

SCORE_RULES = ("yes-logit", "yes-no-softmax", "layer-head")


@dataclass(frozen=True)
class LlmFormat:
    """How an LLM reranker turns (query, passage) into ids and its logits into a score."""

    score_rule: str
    prompt: str
    default_instruction: str | None = None
    #: llm-layerwise: the layer whose head scores by default
    cutoff_layer: int | None = None
    #: the answer words whose logits the rule reads, when not the rule's own (a generic
    #: prompt for a model that was not trained as a reranker picks them at import)
    answers: tuple[str, ...] | None = None
    #: whether the prompt starts with the vocabulary's BOS; None: the style's rule (BAAI
    #: prepends it, Qwen3 does not)
    bos: bool | None = None

    def __post_init__(self) -> None:
        if self.score_rule not in SCORE_RULES:
            raise ValueError(f"unknown LLM score rule {self.score_rule!r}")
        if self.answers is not None:
            object.__setattr__(self, "answers", tuple(self.answers))
            want = {"yes-no-softmax": 2, "yes-logit": 1}.get(self.score_rule, 0)
            if len(self.answers) != want or len(set(self.answers)) != want:
                raise ValueError(f"{self.score_rule} reads {want} distinct answer words")
        for name in ("{query}", "{passage}"):
            if name not in self.prompt:
                raise ValueError(f"LLM prompt lacks {name}")
        if self.score_rule == "layer-head" and self.cutoff_layer is None:
            raise ValueError("a layer-head model needs a cutoff layer")

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> LlmFormat:
        """From a catalog ModelSpec (kind llm-*)."""
        if not spec.prompt:
            raise ValueError(f"{spec.name} has no prompt in the catalog")
        return cls(spec.score_rule, spec.prompt, spec.default_instruction, spec.cutoff_layer)

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> LlmFormat | None:
        """The format a store entry's recipe records (None for a cross-encoder)."""
        return cls.from_dict(recipe["llm"]) if recipe.get("llm") else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LlmFormat:
        return cls(
            score_rule=data["score_rule"],
            prompt=data["prompt"],
            default_instruction=data.get("default_instruction"),
            cutoff_layer=data.get("cutoff_layer"),
            answers=tuple(data["answers"]) if data.get("answers") else None,
            bos=data.get("bos"),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["answers"] = list(self.answers) if self.answers is not None else None
        return out

    @property
    def style(self) -> str:
        """'qwen' (prefix / body / suffix) or 'baai' (BOS + lines); see the module notes."""
        return "qwen" if self.score_rule == "yes-no-softmax" else "baai"

    @property
    def wants_bos(self) -> bool:
        return self.style == "baai" if self.bos is None else self.bos

    @property
    def answer_words(self) -> tuple[str, ...]:
        """The tokens whose logits the rule reads, in the order raw_scores expects."""
        if self.answers is not None:
            return self.answers
        if self.score_rule == "yes-no-softmax":
            return ("yes", "no")
        if self.score_rule == "yes-logit":
            return ("Yes",)
        return ()
