"""Runs llama.cpp's own converter (convert_hf_to_gguf.py) with edgerank's two additions.

Executed by convert/gguf.py in a subprocess whose sys.path starts with the converter's
directory and its own gguf-py (the PyPI `gguf` does not match it). Nothing of llama.cpp is
copied: the script is imported and its main() runs once per job with the arguments given.

The additions wrap the model class the converter picks for the architecture:

- metadata: each job's ``meta`` keys (``edgerank.*``: which fixes were applied, the
  segment-B id offset, the source architecture) are written beside the converter's own;
- vocabulary: edgerank tokenizes with the checkpoint's tokenizer.json and hands llama.cpp
  ids, so llama.cpp's tokenizer is never used. When the converter cannot write the
  vocabulary (a tokenizer hash it does not know, sentencepiece not installed, no
  tokenizer.model), the GGUF gets llama.cpp's id-only vocabulary ("none": the vocabulary
  size and token type count, no strings) instead of failing; ``edgerank.vocab`` records it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: what the converter raises when it cannot write the vocabulary
VOCAB_FAILURES = (NotImplementedError, FileNotFoundError, ImportError, KeyError, TypeError)


def _wrap(cls, meta: dict[str, object]):
    def set_vocab(self):
        saved = [dict(kv) for kv in self.gguf_writer.kv_data]
        try:
            cls.set_vocab(self)
            self.gguf_writer.add_string("edgerank.vocab", "converter")
        except VOCAB_FAILURES as exc:
            self.gguf_writer.kv_data = saved
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            print(f"edgerank: vocabulary not convertible ({reason}); writing ids only",
                  file=sys.stderr)  # fmt: skip
            n_vocab = int(self.hparams["vocab_size"])
            self.gguf_writer.add_tokenizer_model("none")
            self.gguf_writer.add_vocab_size(n_vocab)
            self.gguf_writer.add_token_type_count(int(self.hparams.get("type_vocab_size", 1)))
            self.gguf_writer.add_string("edgerank.vocab", f"ids-only ({reason})")

    def set_gguf_parameters(self):
        cls.set_gguf_parameters(self)
        for key, value in meta.items():
            if isinstance(value, bool):
                self.gguf_writer.add_bool(key, value)
            elif isinstance(value, int):
                self.gguf_writer.add_uint32(key, value)
            else:
                self.gguf_writer.add_string(key, str(value))

    body = {"model_arch": cls.model_arch, "set_vocab": set_vocab}
    body["set_gguf_parameters"] = set_gguf_parameters
    return type(cls.__name__, (cls,), body)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m edgerank.convert.gguf_runner")
    p.add_argument("tools", type=Path, help="directory holding convert_hf_to_gguf.py")
    p.add_argument(
        "jobs",
        help='JSON list of {"model", "outfile", "outtype", "meta"}: one process, one import '
        "of torch and the converter, several conversions",
    )
    args = p.parse_args(argv)
    sys.path[:0] = [str(args.tools), str(args.tools / "gguf-py")]

    import conversion

    pick = conversion.get_model_class
    meta: dict[str, object] = {}

    def get_model_class(name, mmproj=False):
        return _wrap(pick(name, mmproj=mmproj), dict(meta))

    conversion.get_model_class = get_model_class
    import convert_hf_to_gguf

    convert_hf_to_gguf.get_model_class = get_model_class
    for job in json.loads(args.jobs):
        meta.clear()
        meta.update(job.get("meta") or {})
        sys.argv = [
            "convert_hf_to_gguf.py",
            job["model"],
            "--outfile",
            job["outfile"],
            "--outtype",
            job.get("outtype", "f16"),
        ]
        convert_hf_to_gguf.main()


if __name__ == "__main__":
    main()
