"""What a request may ask for, checked by every face before any work: the served names and
the size limits, in one place, so gRPC, HTTP and the TEI stream refuse the same input with
the same words (errors.py maps them to codes)."""

from __future__ import annotations

from edgerank.backends.base import ScoreOptions
from edgerank.engine.config import EngineConfig
from edgerank.errors import EmptyInput, InvalidInput, ModelNotFound, TooLarge


class RequestLimits:
    """Mixed into the Service: ``config`` holds the limits, ``model_names`` what it serves."""

    config: EngineConfig
    model_names: frozenset[str]

    def check_model(self, name: str | None) -> None:
        if name and name not in self.model_names:
            served = ", ".join(repr(n) for n in self.served_names())
            raise ModelNotFound(f"model {name!r} is not served here; this daemon serves {served}")

    def served_names(self) -> list[str]:
        """The names a request may ask for: the served_model_name ones first, then the model's."""
        names = [n for n in self.config.served_names if n in self.model_names]
        return names + sorted(self.model_names - set(names))

    def served_name(self, asked: str | None) -> str:
        return asked or self.served_names()[0]  # the name asked for, else the first served

    def check_text(self, what: str, text: str, *, empty_ok: bool = True) -> None:
        limit = self.config.max_document_chars
        if not empty_ok and not text.strip():
            raise InvalidInput(f"{what} is empty")
        if len(text) > limit:
            raise TooLarge(
                f"{what} has {len(text)} characters, over the limit of {limit} (max_document_chars)"
            )
        if "\x00" in text:
            raise InvalidInput(f"{what} contains a NUL character")

    def check_count(self, n: int, what: str = "documents") -> None:
        if n == 0:
            raise EmptyInput(f"no {what} to score")
        limit = self.config.max_documents
        if n > limit:
            raise TooLarge(f"{n} {what}, over the limit of {limit} per request (max_documents)")

    def check_options(self, options: ScoreOptions) -> None:
        if options.instruction is not None:
            self.check_text("instruction", options.instruction)
        if options.max_tokens_per_doc is not None and options.max_tokens_per_doc < 1:
            raise InvalidInput(f"max_tokens_per_doc must be >= 1, got {options.max_tokens_per_doc}")
