"""Presso's searched plans in the runtimes' formats against the stock recipes, on held-out text.

For SmolLM2-135M, side by side in one run:

* ``gguf``: llama.cpp's stock types made by llama.cpp's own quantizer (``llama_model_quantize``,
  the routine behind ``llama-quantize``) from the same F32 GGUF that Presso writes for the dense
  model: Q8_0, Q5_1, Q5_0, Q4_1, Q4_0, Q4_K_M, Q3_K_M, Q2_K, without an importance matrix; each
  stock file again WITH an importance matrix from the calibration text; and the front of a Presso
  study with ``target: gguf``. llama-cpp-python's binding of ``llama_model_quantize`` cannot pass an
  importance matrix (``params.imatrix`` is a C++ map), so the "+ imatrix" files keep exactly the
  per-tensor types llama.cpp chose for the stock file (read back from it) and quantize each tensor
  with ggml's ``ggml_quantize_chunk`` and the importance matrix, which is what
  ``llama_model_quantize`` does per tensor when it is given one (``llama-imatrix``'s matrix is the
  same statistic: the mean squared activation of each input column);
* ``compressed-tensors``: uniform W8A16 (per channel) and W4A16 (groups of 32 and 64, symmetric)
  recipes against the front of a Presso study with ``target: compressed-tensors``.

Every model is scored on ``builtin:lee-heldout`` (``lee.cor``: documents the search never saw;
the search selects on its own evaluation text cut from ``lee_background.cor``): the first
``--windows`` windows of ``--window`` tokens, each scored from position 0. GGUF files are scored
in llama.cpp (llama-cpp-python); compressed-tensors models in torch with the weights transformers
loads (equal to the bit: see tests/targets). Sizes are the bytes of each file.

SmolLM2-135M ships as GGUF Q4_1, so Q4_1 reproduces its block weights exactly: below Q4_1's size
is where a search has to show its worth.

    python benchmarks/targets.py                      # both targets, 60 trials each
    python benchmarks/targets.py --targets gguf --trials 30
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from presso.data import load_documents  # noqa: E402
from presso.plan import LayerConfig, Plan, QuantConfig, plan_from_dict  # noqa: E402
from presso.search import Evaluator, StudyConfig, pareto_rows, run_study  # noqa: E402
from presso.search import load_existing_study  # noqa: E402
from presso.targets import get_target  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_models import perplexity  # noqa: E402  (one scoring routine for the benchmarks)

STOCK = ["Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K"]


def heldout_windows(tokenizer, windows: int, width: int) -> torch.Tensor:
    text = "\n".join(load_documents("builtin:lee-heldout"))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    need = windows * width
    if ids.numel() < need:
        raise SystemExit(f"held-out text has {ids.numel()} tokens; need {need}")
    return ids[:need].reshape(windows, width)


def llama_ppl(path: Path, ids: torch.Tensor, threads: int) -> float:
    runtime = get_target("gguf").load(path, n_ctx=ids.shape[1], n_threads=threads)
    return perplexity(runtime, ids)


def llama_quantize(source: Path, out: Path, ftype: str, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise RuntimeError(f"llama_model_quantize {ftype} failed ({status})")


def stock_plan(stock: Path, model) -> Plan:
    """A plan that gives every weight the ggml type llama.cpp chose for it in ``stock``."""
    import gguf

    from presso.targets.gguf import layout

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(stock)).tensors}
    lay = layout(model)
    layers = {}
    for entry in lay.entries:
        module = entry.key.removesuffix(".weight")
        if module == entry.key or types[entry.gguf_name] == "F32" or len(lay.shapes[entry.key]) != 2:
            continue  # norms and biases stay F32 in both files
        layers[module] = LayerConfig(quant=QuantConfig(format=types[entry.gguf_name]))
    return Plan(layers=layers)


def run_search(target: str, space: str, trials: int, seed: int, store: Path, evaluator_cache: dict) -> list:
    config = StudyConfig(name=f"{target}-{seed}", model="builtin:smollm2-135m", target=target, space=space,
                         objectives=("ppl_ratio", "size_fraction"), constraints=("ppl_ratio <= 3.0",),
                         trials=trials, seed=seed, device="cpu", storage=f"sqlite:///{store}", tracking_uri=None)
    key = (target, space)
    if key not in evaluator_cache:
        evaluator_cache[key] = Evaluator(config)
    run_study(config, progress=False, evaluator=evaluator_cache[key])
    study = load_existing_study(config.name, config.storage)
    return evaluator_cache[key], pareto_rows(study)


def row(name: str, size: int, dense_size: int, ppl: float, dense_ppl: float, note: str = "") -> dict:
    return {"name": name, "bytes": size, "fraction": size / dense_size, "ppl": ppl, "gap": ppl / dense_ppl - 1, "note": note}


def print_table(title: str, rows: list[dict], front: list[dict]) -> list[str]:
    lines = [f"### {title}", "", "| recipe | file bytes | of F32 | held-out ppl | gap to dense | best Presso front gap at <= this size |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r["bytes"]):
        fits = [f for f in front if f["bytes"] <= r["bytes"]]
        best = min(fits, key=lambda f: f["gap"]) if fits else None
        shown = "-" if best is None else f"{best['gap']:.4f} (trial {best['name']}, {best['fraction']:.4f})"
        lines.append(f"| {r['name']}{r['note']} | {r['bytes']:,} | {r['fraction']:.4f} | {r['ppl']:.3f} | {r['gap']:.4f} | {shown} |")
    lines += ["", "Presso front (held-out):", "", "| trial | of F32 | held-out ppl | gap | search-text ppl_ratio |", "|---|---:|---:|---:|---:|"]
    for f in sorted(front, key=lambda f: f["bytes"]):
        lines.append(f"| {f['name']} | {f['fraction']:.4f} | {f['ppl']:.3f} | {f['gap']:.4f} | {f['search']:.4f} |")
    print("\n".join(lines), flush=True)
    return lines


def bench_gguf(args, work: Path, cache: dict, ids: torch.Tensor) -> list[str]:
    target = get_target("gguf")
    evaluator, front_rows = run_search("gguf", "builtin:smollm2-135m-gguf", args.trials, args.seed, work / "gguf.db", cache)
    dense_model = evaluator.assets.dense
    f32 = work / "f32.gguf"
    _, dense_result = evaluator.assets.compress(Plan())
    target.write(dense_model, dense_result, None, f32, force=True)
    dense_size, dense_ppl = f32.stat().st_size, llama_ppl(f32, ids, args.threads)
    rows = [row("F32 (dense)", dense_size, dense_size, dense_ppl, dense_ppl)]
    for ftype in STOCK:
        stock = work / f"stock-{ftype}.gguf"
        llama_quantize(f32, stock, ftype, args.threads)
        rows.append(row(f"llama.cpp {ftype}", stock.stat().st_size, dense_size, llama_ppl(stock, ids, args.threads), dense_ppl))
        plan = stock_plan(stock, dense_model)
        model, result = evaluator.assets.compress(plan)
        out = work / f"imatrix-{ftype}.gguf"
        written = target.write(model, result, None, out, force=True)
        rows.append(row(f"{ftype} + imatrix", written.on_disk_bytes, dense_size, llama_ppl(out, ids, args.threads), dense_ppl,
                        " (llama.cpp's types, ggml + imatrix via Presso)"))
        stock.unlink()
        out.unlink()
    front = []
    for trial in front_rows:
        plan = plan_from_dict(trial.plan)
        model, result = evaluator.assets.compress(plan)
        out = work / f"front-{trial.number}.gguf"
        written = target.write(model, result, None, out, force=True)
        assert written.on_disk_bytes == int(trial.metrics["size_bytes"]), "file bytes differ from the trial's size_bytes"
        r = row(str(trial.number), written.on_disk_bytes, dense_size, llama_ppl(out, ids, args.threads), dense_ppl)
        r["search"] = trial.values["ppl_ratio"]
        front.append(r)
        out.unlink()
    return print_table(f"gguf (llama.cpp), {args.trials}-trial search, seed {args.seed}", rows, front)


def bench_ct(args, work: Path, cache: dict, ids: torch.Tensor) -> list[str]:
    target = get_target("compressed-tensors")
    evaluator, front_rows = run_search("compressed-tensors", "builtin:smollm2-135m-ct", args.trials, args.seed,
                                       work / "ct.db", cache)
    dense_model = evaluator.assets.dense
    _, dense_result = evaluator.assets.compress(Plan())
    dense_size = target.predict_bytes(dense_model, dense_result)
    dense_ppl = perplexity(dense_model, ids)
    rows = [row("dense", dense_size, dense_size, dense_ppl, dense_ppl)]
    for name, quant in [("W8A16 per channel", QuantConfig(bits=8, group_size=0, symmetric=True)),
                        ("W4A16 g64", QuantConfig(bits=4, group_size=64, symmetric=True)),
                        ("W4A16 g32", QuantConfig(bits=4, group_size=32, symmetric=True))]:
        model, result = evaluator.assets.compress(Plan(layers={"re:.*": LayerConfig(quant=quant)}))
        rows.append(row(f"uniform {name} (RTN)", target.predict_bytes(model, result), dense_size, perplexity(model, ids), dense_ppl))
    front = []
    for trial in front_rows:
        model, result = evaluator.assets.compress(plan_from_dict(trial.plan))
        r = row(str(trial.number), target.predict_bytes(model, result), dense_size, perplexity(model, ids), dense_ppl)
        r["search"] = trial.values["ppl_ratio"]
        front.append(r)
    return print_table(f"compressed-tensors (transformers / vLLM), {args.trials}-trial search, seed {args.seed}", rows, front)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="gguf,compressed-tensors")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    from presso.models import load_model

    ids = heldout_windows(load_model("builtin:smollm2-135m").tokenizer, args.windows, args.window)
    print(f"# benchmarks/targets.py, {datetime.date.today()}, {platform.machine()} {os.cpu_count()} cores, "
          f"held-out {ids.numel()} tokens of builtin:lee-heldout\n", flush=True)
    cache: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.targets.split(","):
            {"gguf": bench_gguf, "compressed-tensors": bench_ct}[name](args, Path(tmp), cache, ids)
            print(flush=True)
    print(f"wall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
