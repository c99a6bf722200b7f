"""Quantization methods side by side: size, held-out quality and compress time.

Uniform plans over every Linear of the blocks (embedding tables unquantized, as in
llm-compressor's recipes), for each registered method (``rtn``, ``rtn_fmin``, ``imatrix``,
``gptq``) at the given bits and group sizes, on SmolLM2-135M and all-MiniLM-L6-v2.

Quality: SmolLM2 perplexity on the first 4,096 tokens of ``builtin:lee-heldout`` (lee.cor;
16 windows of 256, each scored from position 0), as in issue 12's reference points (dense
35.33). MiniLM: 1 - mean cosine similarity of held-out sentence embeddings to the dense
model's (lower is better; "gap" is this value). ``gap`` is the quality gap to the dense model
(perplexity - dense perplexity for SmolLM2). Calibration: 128 windows of 64 tokens of
``builtin:lee`` by default (statistics and Hessians collected once per model, timed
separately). More tokens in shorter windows is what brought MiniLM's 4-bit GPTQ under half of
RTN's gap: 16 x 128 tokens gave 0.57 of RTN's gap, 32 x 128 0.51, 64 x 64 0.42, 128 x 64 0.39
(MiniLM's held-out sentences are short; measured at g64).

    python benchmarks/quantizers.py [--models smollm2 minilm] [--bits 8 4 3] [--groups 32 64]
                                    [--methods rtn rtn_fmin imatrix gptq] [--calibration 128x64]
                                    [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from presso.compress import collect_calibration, compress_  # noqa: E402
from presso.compress.quantizers import registered_quantizers  # noqa: E402
from presso.plan import LayerConfig, Plan, QuantConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_models import embeddings, perplexity  # noqa: E402  (one scoring routine for the benchmarks)

REFS = {"smollm2": "builtin:smollm2-135m", "minilm": "builtin:minilm-l6"}


def run_model(key: str, bits_list, groups, methods, calib_shape=(128, 64)) -> None:
    from presso.data import load_documents, split_documents, token_batches
    from presso.models import load_model

    loaded = load_model(REFS[key])
    dense, tok = loaded.model, loaded.tokenizer
    calib_docs, _ = split_documents(load_documents("builtin:lee"))
    calib = token_batches(tok, calib_docs, *calib_shape)
    heldout = load_documents("builtin:lee-heldout")
    if loaded.task == "causal-lm":
        ids = tok("\n".join(heldout), return_tensors="pt")["input_ids"][0][:4096]
        eval_ids = ids.reshape(16, 256)
        quality = lambda m: perplexity(m, eval_ids)  # noqa: E731
        dense_q = quality(dense)
        gap = lambda q: q - dense_q  # noqa: E731
        metric = "perplexity"
    else:
        sentences = [s.strip() + "." for d in heldout for s in d.split(". ") if len(s.split()) > 4][:256]
        encoded = tok(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
        reference = embeddings(dense, encoded)
        quality = lambda m: 1.0 - float((embeddings(m, encoded) * reference).sum(-1).mean())  # noqa: E731
        dense_q = 0.0
        gap = lambda q: q  # noqa: E731
        metric = "1 - cosine"
    t0 = time.perf_counter()
    stats = collect_calibration(dense, calib, hessians=True)
    calib_s = time.perf_counter() - t0
    print(f"\n## {REFS[key]}  (quality: {metric}; dense {dense_q:.4g}; calibration with Hessians "
          f"{calib_s:.1f}s, {calib_shape[0]}x{calib_shape[1]} tokens)", flush=True)
    print(f"{'bits':>4} {'group':>5} {'method':>9} {'fraction':>9} {metric:>11} {'gap':>9} {'gap/rtn':>8} "
          f"{'quant_s':>8}", flush=True)
    for bits in bits_list:
        for g in groups:
            rtn_gap = None
            for method in methods:
                plan = Plan(layers={"re:.*": LayerConfig(quant=QuantConfig(bits=bits, group_size=g, method=method))})
                model = copy.deepcopy(dense)
                result = compress_(model, plan, calibration=stats)
                q = quality(model)
                gq = gap(q)
                if method == "rtn":
                    rtn_gap = gq
                ratio = f"{gq / rtn_gap:.2f}" if rtn_gap else "-"
                print(f"{bits:>4} {g:>5} {method:>9} {result.size.size_fraction:>9.4f} {q:>11.4g} {gq:>9.4g} "
                      f"{ratio:>8} {result.timings['quant_s']:>8.2f}", flush=True)
                del model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "minilm"], choices=list(REFS))
    parser.add_argument("--bits", nargs="+", type=int, default=[8, 4, 3])
    parser.add_argument("--groups", nargs="+", type=int, default=[32, 64])
    parser.add_argument("--methods", nargs="+", default=["rtn", "rtn_fmin", "imatrix", "gptq"],
                        choices=sorted(registered_quantizers()))
    parser.add_argument("--calibration", default="128x64", help="calibration windows x tokens (default 128x64)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = ["rtn", *[m for m in args.methods if m != "rtn"]]  # rtn first: the reference for gap/rtn
    try:
        calib_shape = tuple(int(x) for x in args.calibration.lower().split("x"))
        if len(calib_shape) != 2 or min(calib_shape) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--calibration: got {args.calibration!r}; allowed: WINDOWSxTOKENS such as 128x64")
    for key in args.models:
        run_model(key, args.bits, args.groups, methods, calib_shape)


if __name__ == "__main__":
    main()
