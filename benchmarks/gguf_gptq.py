"""GPTQ inside ggml's blocks against ggml's own rounding, at the same bytes, scored in llama.cpp.

SmolLM2-135M; for each block type (attention and gate/up in it; ffn_down Q4_K, the table Q8_0
in every plan) two plans that differ only in ``quant.method``: ``rtn`` (ggml's quantizer with the
importance matrix, as llama.cpp with ``--imatrix``) and ``gptq`` (ggml's block scales kept, GPTQ
rounding inside them). Each plan's ``.gguf`` is written and scored by llama-cpp-python on the
held-out windows (``builtin:lee-heldout``, the first 16 x 256 tokens, as the other benchmarks);
the trial's own figure (torch, with ggml's activation rounding) is printed next to it.

    python benchmarks/gguf_gptq.py [--formats IQ4_NL Q4_0 Q5_0] [--threads 1] [--windows 16]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from compress_models import perplexity  # noqa: E402  (one scoring routine for the benchmarks)
from presso.compress import collect_calibration, compress_  # noqa: E402
from presso.data import load_documents, split_documents, token_batches  # noqa: E402
from presso.models import load_model  # noqa: E402
from presso.plan import LayerConfig, Plan, QuantConfig  # noqa: E402
from presso.targets import get_target  # noqa: E402
from targets import heldout_windows, llama_ppl  # noqa: E402


def plan_for(fmt: str, method: str) -> Plan:
    return Plan(layers={
        "re:.*mlp\\.down_proj": LayerConfig(quant=QuantConfig(format="Q4_K")),
        "re:.*self_attn\\..*_proj": LayerConfig(quant=QuantConfig(format=fmt, method=method)),
        "re:.*mlp\\.(gate|up)_proj": LayerConfig(quant=QuantConfig(format=fmt, method=method)),
        "model.embed_tokens": LayerConfig(quant=QuantConfig(format="Q8_0")),
    })


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formats", nargs="+", default=["IQ4_NL", "Q4_0", "Q5_0"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--windows", type=int, default=16, help="held-out windows of 256 tokens")
    parser.add_argument("--calibration", default="16x128", help="calibration windows x tokens of builtin:lee")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    loaded = load_model("builtin:smollm2-135m")
    dense, tok = loaded.model.eval(), loaded.tokenizer
    ids = heldout_windows(tok, args.windows, 256)
    calib_docs, _ = split_documents(load_documents("builtin:lee"))
    calib = token_batches(tok, calib_docs, *map(int, args.calibration.split("x")))
    started = time.perf_counter()
    stats = collect_calibration(dense, calib, hessians=True)
    print(f"SmolLM2-135M; calibration {args.calibration} tokens with Hessians {time.perf_counter() - started:.1f} s; "
          f"held-out {args.windows} x 256 tokens; {args.threads} thread(s)")
    target = get_target("gguf")
    dense_ppl = perplexity(dense, ids)
    print(f"dense (torch fp32): {dense_ppl:.3f}\n")
    print(f"{'blocks':>7} {'method':>6} {'file bytes':>12} {'compress s':>10} {'trial ppl':>10} {'llama.cpp ppl':>13} {'gap':>7}")
    gaps = {}
    with tempfile.TemporaryDirectory(prefix="presso-gguf-gptq-") as work:
        for fmt in args.formats:
            for method in ("rtn", "gptq"):
                model = copy.deepcopy(dense)
                started = time.perf_counter()
                result = compress_(model, plan_for(fmt, method), calibration=stats)
                seconds = time.perf_counter() - started
                with target.emulate(model, result):
                    trial = perplexity(model, ids)
                written = target.write(model, result, tok, Path(work) / f"{fmt}-{method}.gguf")
                assert written.on_disk_bytes == written.predicted_bytes
                runtime = llama_ppl(written.path, ids, args.threads)
                gaps[fmt, method] = runtime - dense_ppl
                print(f"{fmt:>7} {method:>6} {written.on_disk_bytes:>12,} {seconds:>10.1f} {trial:>10.3f} "
                      f"{runtime:>13.3f} {gaps[fmt, method]:>7.3f}", flush=True)
                written.path.unlink()
                del model
    print()
    for fmt in args.formats:
        print(f"{fmt}: gptq's gap / rtn's gap in llama.cpp = {gaps[fmt, 'gptq'] / gaps[fmt, 'rtn']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
