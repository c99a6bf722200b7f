"""Benchmark uniform compression plans on SmolLM2-135M and all-MiniLM-L6-v2.

For each plan: time to apply (``compress_``), predicted and on-disk bytes of the saved
directory, and quality: perplexity on held-out text for SmolLM2, mean cosine similarity of
sentence embeddings to the dense model's for MiniLM.

    python benchmarks/compress_models.py [--models smollm2 minilm] [--device auto] [--threads 1]

Caveat printed with the results: SmolLM2's weights were stored upstream as GGUF Q4_1 (blocks
of 32, scale and float minimum per block), so the "dense" model is already on a 4-bit grid;
a 4-bit g32 quantizer with a float minimum would be almost free on it (Presso's integer zero
points are not: see SMOLLM_NOTE).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from presso.compress import (  # noqa: E402
    collect_calibration,
    compress_,
    compressible_modules,
    embedding_modules,
    save_compressed,
)
from presso.plan import LayerConfig, Plan, QuantConfig, SparsityConfig  # noqa: E402

SMOLLM_NOTE = (
    "NOTE: SmolLM2-135M ships as GGUF Q4_1 (blocks of 32, fp16 scale and a float minimum per block), so its "
    "'dense' weights already lie on a 4-bit grid and a 4-bit g32 quantizer with a float per-block minimum "
    "would be near-free on it. Presso's asymmetric codes use an integer zero point and a range that always "
    "contains 0 (so pruned zeros stay exactly 0); that grid does not match Q4_1's (about 0.3% of the weights "
    "are reproduced exactly, about 8% relative error, as on ordinary weights), so 4-bit g32 is not free here. "
    "Results on this model still carry the Q4_1 caveat; MiniLM has ordinary fp32 weights.")


def _group(model, wanted: int) -> int:
    """``wanted`` if it divides every compressible layer's input width, else the largest power of two that does."""
    widths = {m.in_features for m in compressible_modules(model).values()}
    g = wanted
    while g > 1 and any(w % g for w in widths):
        g //= 2
    return g


def plans(model) -> list[tuple[str, Plan]]:
    g128 = _group(model, 128)
    every = "re:.*"
    spec = [
        ("8-bit per-channel", LayerConfig(quant=QuantConfig(bits=8))),
        ("4-bit g32", LayerConfig(quant=QuantConfig(bits=4, group_size=32))),
        (f"4-bit g{g128}", LayerConfig(quant=QuantConfig(bits=4, group_size=g128))),
        ("4-bit per-channel", LayerConfig(quant=QuantConfig(bits=4))),
        ("3-bit g32", LayerConfig(quant=QuantConfig(bits=3, group_size=32))),
        ("50% unstructured (magnitude)", LayerConfig(sparsity=SparsityConfig(0.5))),
        ("2:4 + 8-bit", LayerConfig(sparsity=SparsityConfig(structure="2:4"), quant=QuantConfig(bits=8))),
    ]
    out = [(name, Plan(layers={every: cfg})) for name, cfg in spec]
    out.append(("50% unstructured (wanda)",
                Plan(layers={every: LayerConfig(sparsity=SparsityConfig(0.5))}, criterion="wanda")))
    # The embedding table is named exactly (patterns never reach it); it is most of what is
    # left once the blocks are at 4 bits.
    table = next(iter(embedding_modules(model)))
    blocks_4bit = LayerConfig(quant=QuantConfig(bits=4, group_size=32))
    for label, table_cfg in (("8-bit per-channel", LayerConfig(quant=QuantConfig(bits=8))),
                             ("4-bit g32", blocks_4bit)):
        out.append((f"4-bit g32 + embedding {label}", Plan(layers={table: table_cfg, every: blocks_4bit})))
    return out


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, batch_size: int = 4) -> float:
    total, count = 0.0, 0
    for start in range(0, ids.shape[0], batch_size):
        batch = ids[start : start + batch_size]
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                reduction="sum")
        total += float(nll)
        count += batch[:, 1:].numel()
    return math.exp(total / count)


@torch.no_grad()
def embeddings(model, encoded, batch_size: int = 32) -> torch.Tensor:
    out = []
    for start in range(0, encoded["input_ids"].shape[0], batch_size):
        batch = {k: v[start : start + batch_size] for k, v in encoded.items()}
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def run_model(ref: str, device: str, eval_tokens: int, calib_seqs: int, repeats: int) -> list[dict]:
    from presso.data import load_documents, split_documents, token_batches
    from presso.models import load_model

    t0 = time.perf_counter()
    loaded = load_model(ref, device=device)
    dense, tokenizer = loaded.model, loaded.tokenizer
    load_s = time.perf_counter() - t0
    calib_docs, eval_docs = split_documents(load_documents("builtin:lee"))
    causal = loaded.task == "causal-lm"
    seq_len = 128
    calib_ids = token_batches(tokenizer, calib_docs, calib_seqs, seq_len).to(device)
    t0 = time.perf_counter()
    stats = collect_calibration(dense, calib_ids)
    calib_s = time.perf_counter() - t0
    if causal:
        eval_ids = token_batches(tokenizer, load_documents("builtin:lee-heldout") + eval_docs,
                                 max(1, eval_tokens // 256), 256).to(device)
        quality = lambda m: perplexity(m, eval_ids)  # noqa: E731
        metric = "perplexity"
    else:
        sentences = [s.strip() + "." for d in eval_docs for s in d.split(". ") if len(s.split()) > 4][:256]
        encoded = tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt").to(device)
        reference = embeddings(dense, encoded)
        quality = lambda m: float((embeddings(m, encoded) * reference).sum(-1).mean())  # noqa: E731
        metric = "mean cosine to dense"
    t0 = time.perf_counter()
    rows = [{"model": ref, "plan": "dense (fp32)", "apply_s": 0.0, "predicted": None, "on_disk": None,
             "fraction": 1.0, "quality": quality(dense), "metric": metric}]
    eval_s = time.perf_counter() - t0
    print(f"# {ref}: load {load_s:.1f}s, calibration ({calib_seqs}x{seq_len} tokens) {calib_s:.1f}s, "
          f"one quality evaluation {eval_s:.1f}s", flush=True)
    for name, plan in plans(dense):
        # best of `repeats` applications: this machine's CPU time is shared, so one run is noisy
        apply_s = []
        for _ in range(repeats):
            model = copy.deepcopy(dense)
            result = compress_(model, plan, calibration=stats)
            apply_s.append(result.timings["total_s"])
        with tempfile.TemporaryDirectory(prefix="presso-bench-") as tmp:
            report = save_compressed(model, result, tokenizer, Path(tmp) / "out")
        rows.append({"model": ref, "plan": name, "apply_s": min(apply_s),
                     "predicted": report.predicted_bytes, "on_disk": report.on_disk_bytes,
                     "fraction": result.size.size_fraction, "quality": quality(model), "metric": metric})
        print(f"  done: {name}", file=sys.stderr, flush=True)
        del model
    return rows


def _mb(n):
    return "-" if n is None else f"{n / 1e6:.2f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "minilm"], choices=["smollm2", "minilm"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens for SmolLM2 perplexity")
    parser.add_argument("--calib-seqs", type=int, default=16, help="calibration sequences of 128 tokens (Wanda)")
    parser.add_argument("--repeats", type=int, default=3, help="applications per plan; the fastest is reported")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args(argv)
    from presso.models import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    refs = {"smollm2": "builtin:smollm2-135m", "minilm": "builtin:minilm-l6"}
    rows = []
    for key in args.models:
        rows += run_model(refs[key], device, args.eval_tokens, args.calib_seqs, args.repeats)
    print(f"\ndevice: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    header = "| model | plan | apply s (best of runs) | predicted MB | on-disk MB | disk/predicted | tensor size fraction | quality |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = "-" if r["predicted"] is None else f"{r['on_disk'] / r['predicted']:.6f}"
        print(f"| {r['model']} | {r['plan']} | {r['apply_s']:.2f} | {_mb(r['predicted'])} | {_mb(r['on_disk'])} | "
              f"{ratio} | {r['fraction']:.3f} | {r['metric']} {r['quality']:.4g} |")
    if "smollm2" in args.models:
        print("\n" + SMOLLM_NOTE)
    print("Sizes include the whole saved directory (safetensors + config + tokenizer + plan + manifest); "
          "'tensor size fraction' is stored tensor bytes over the fp32 model's tensor bytes (tied once).")


if __name__ == "__main__":
    main()
