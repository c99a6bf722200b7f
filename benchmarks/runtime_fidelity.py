"""Does a ``gguf`` trial score what llama.cpp will compute? The trial's perplexity next to llama.cpp's.

For SmolLM2-135M, on the same held-out windows (``builtin:lee-heldout``), for each plan:

* **trial, float activations**: the torch model with the ggml-dequantized weights (the trial
  before activation emulation);
* **trial, ggml activations**: the same model inside ``GGUFTarget.emulate`` (each matmul's input
  rounded to its weight type's ``vec_dot_type``, as ggml does): what a ``gguf`` trial now scores;
* **llama.cpp**: the ``.gguf`` file Presso writes for the plan, run by llama-cpp-python.

Plans: llama.cpp's stock mixes (the per-tensor types ``llama_model_quantize`` picks, re-made by
Presso with the importance matrix, as ``benchmarks/targets.py`` does) and uniform mixes of the
formats the built-in gguf space offers.

    python benchmarks/runtime_fidelity.py
    python benchmarks/runtime_fidelity.py --windows 4 --window 64 --stock Q4_K_M
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from compress_models import perplexity  # noqa: E402  (one scoring routine for the benchmarks)
from presso.plan import LayerConfig, Plan, QuantConfig  # noqa: E402
from presso.search import Evaluator, StudyConfig  # noqa: E402
from presso.targets import get_target  # noqa: E402
from targets import heldout_windows, llama_ppl, llama_quantize, stock_plan  # noqa: E402


def uniform(attn: str, mlp: str, down: str, table: str) -> Plan:
    def q(fmt):
        return LayerConfig(quant=QuantConfig(format=fmt))

    return Plan(layers={"re:.*self_attn.*": q(attn), "re:.*mlp.(gate|up)_proj": q(mlp),
                        "re:.*mlp.down_proj": q(down), "model.embed_tokens": q(table)})


MIXES = {
    "Q8_0 everywhere": uniform("Q8_0", "Q8_0", "Q8_0", "Q8_0"),
    "Q5_0 / Q5_K down / Q8_0 table": uniform("Q5_0", "Q5_0", "Q5_K", "Q8_0"),
    "IQ4_NL / Q4_K down / Q5_1 table": uniform("IQ4_NL", "IQ4_NL", "Q4_K", "Q5_1"),
    "IQ4_NL / Q3_K down / IQ4_NL table": uniform("IQ4_NL", "IQ4_NL", "Q3_K", "IQ4_NL"),
    "IQ4_NL / Q2_K down / IQ4_NL table": uniform("IQ4_NL", "IQ4_NL", "Q2_K", "IQ4_NL"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--stock", nargs="*", default=["Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = StudyConfig(name="fidelity", model="builtin:smollm2-135m", target="gguf",
                         space="builtin:smollm2-135m-gguf", objectives=("ppl_ratio", "size_fraction"),
                         device="cpu", tracking_uri=None)
    evaluator = Evaluator(config)
    target = get_target("gguf")
    ids = heldout_windows(evaluator.loaded.tokenizer, args.windows, args.window)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plans = dict(MIXES)
        if args.stock:
            f32 = work / "f32.gguf"
            _, dense_result = evaluator.assets.compress(Plan())
            target.write(evaluator.assets.dense, dense_result, None, f32)
            for ftype in args.stock:
                stock = work / f"stock-{ftype}.gguf"
                llama_quantize(f32, stock, ftype, args.threads)
                plans[f"llama.cpp {ftype} types + imatrix"] = stock_plan(stock, evaluator.assets.dense)
                stock.unlink()
        for name, plan in plans.items():
            model, result = evaluator.assets.compress(plan, reuse=True)
            with torch.no_grad():
                float_ppl = perplexity(model, ids)
                with target.emulate(model, result):
                    emulated_ppl = perplexity(model, ids)
            out = work / "plan.gguf"
            written = target.write(model, result, None, out, force=True)
            runtime_ppl = llama_ppl(out, ids, args.threads)
            out.unlink()
            rows.append((name, written.on_disk_bytes, float_ppl, emulated_ppl, runtime_ppl))
            print(f"{name}: float {float_ppl:.3f}, ggml activations {emulated_ppl:.3f}, llama.cpp {runtime_ppl:.3f}",
                  flush=True)

    lines = [f"### Trial vs llama.cpp perplexity, SmolLM2-135M, {args.windows} x {args.window} held-out tokens",
             "", f"`python benchmarks/runtime_fidelity.py --windows {args.windows} --window {args.window}` "
             f"({platform.machine()}, {os.cpu_count()} cores, {datetime.date.today()})", "",
             "| plan | file bytes | trial ppl, float activations | trial ppl, ggml activations | llama.cpp ppl "
             "| gap, float | gap, ggml activations |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, size, float_ppl, emulated_ppl, runtime_ppl in rows:
        lines.append(f"| {name} | {size:,} | {float_ppl:.3f} | {emulated_ppl:.3f} | {runtime_ppl:.3f} "
                     f"| {float_ppl / runtime_ppl - 1:+.2%} | {emulated_ppl / runtime_ppl - 1:+.2%} |")
    gaps = sorted(abs(r[3] / r[4] - 1) for r in rows)
    float_gaps = sorted(abs(r[2] / r[4] - 1) for r in rows)
    lines += ["", f"|gap| median / max: float activations {float_gaps[len(rows) // 2]:.2%} / {float_gaps[-1]:.2%}; "
              f"ggml activations {gaps[len(rows) // 2]:.2%} / {gaps[-1]:.2%}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
