"""Trial cost and latency on a CUDA GPU, in a few minutes; skips cleanly where there is none.

Needs only torch and transformers (plus this repository on ``sys.path``): where the built-in
SmolLM2-135M is not installed it builds a Llama with SmolLM2-135M's shapes and random weights,
which is enough for timings (quality columns are then meaningless and say so). Per plan it runs
the search's own trial path (``CompressionAssets.compress(plan, reuse=True)`` then the
``ppl_ratio``/``size_fraction`` objectives) and reports, against the floor of one bare forward
pass of the dense model over the same batches:

* copy / prune / quant / size / evaluate seconds and trial / floor;
* ``latency_ms`` (the model as built: fake-quantized weights run at dense speed) and
  ``latency_kernel_ms`` (one decode step at batch 1 with the compressed layers on real kernels:
  tinygemm int4, weight-only int8, 2:4 semi-structured), with the kernels that ran.

    python benchmarks/gpu_check.py                 # CUDA if present, else prints a skip line
    python benchmarks/gpu_check.py --device cpu    # the same table on CPU (for checking the script)
    python benchmarks/gpu_check.py --vllm          # also: compressed-tensors folders served by vLLM

With ``--vllm`` (needs ``pip install vllm``), uniform W4A16 (g32, g128) and W8A16 plans are written
as the ``compressed-tensors`` target's folders and run by vLLM's engine (what ``vllm serve DIR``
runs): decode ms/token (the ``vllm_decode_ms`` objective's measurement) and the WNA16 kernel vLLM
logged for the layers.

Store and tracking costs are CPU-side; ``benchmarks/trial_cost.py`` measures them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOLLM2_SHAPES = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0)


def load(device: str, dtype):
    """The built-in SmolLM2 where installed, else random weights with its shapes."""
    import torch

    try:
        from presso.models import load_model, smollm2_available

        if smollm2_available():
            loaded = load_model("builtin:smollm2-135m", device=device)
            return loaded.model.to(dtype), "SmolLM2-135M (built-in weights; GGUF Q4_1 origin)", True
    except Exception as exc:  # noqa: BLE001 - any failure falls back to random weights
        print(f"note: built-in SmolLM2 not loadable here ({type(exc).__name__}); using random weights")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_SHAPES)).to(device=device, dtype=dtype).eval()
    return model, "Llama with SmolLM2-135M shapes, random weights (timing only)", False


class RandomText:
    """Calibration tokens for CompressionAssets without a corpus (timing only)."""

    def __init__(self, vocab: int, device: str):
        self.vocab, self.device = vocab, device

    def calibration_ids(self, samples: int, seq_len: int):
        import torch

        gen = torch.Generator().manual_seed(1)
        return torch.randint(0, self.vocab, (samples, seq_len), generator=gen)


def plans(bound, model_ref: str | None):
    """Representative plans: uniform recipes (each kernel kind) and random per-unit plans."""
    from presso.plan import LayerConfig, Plan, QuantConfig, SparsityConfig

    def everywhere(cfg, criterion="wanda"):
        # Embedding tables (exact-name units) take the recipe's quantization only, never pruning.
        table = LayerConfig(quant=cfg.quant)
        layers = {m: table if m in u.group.modules else cfg for u in bound.units for m in u.modules}
        return Plan(layers=layers, criterion=criterion, calibration_samples=16, calibration_seq_len=128)

    out = [
        ("uniform 4-bit g32", everywhere(LayerConfig(quant=QuantConfig(bits=4, group_size=32)))),
        ("uniform 8-bit g32", everywhere(LayerConfig(quant=QuantConfig(bits=8, group_size=32)))),
        ("50% wanda + 4-bit g64", everywhere(LayerConfig(sparsity=SparsityConfig(0.5),
                                                           quant=QuantConfig(bits=4, group_size=64)))),
        ("2:4 (magnitude), 16-bit", everywhere(LayerConfig(sparsity=SparsityConfig(structure="2:4")), "magnitude")),
    ]
    rng = random.Random(0)
    for i in range(3):
        def ask(name, domain):
            return rng.choice(domain.grid())

        out.append((f"random per-unit plan {i + 1}", bound.sample(ask, model=model_ref)))
    return out


def time_cuda(fn, device) -> float:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vllm", action="store_true", help="also serve compressed-tensors folders with vLLM")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu_check: skipped: torch is not installed")
        return 0
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: skipped: no CUDA device visible (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda or 'none'})")
        return 0
    started_all = time.perf_counter()
    from presso.compress import compressible_modules, embedding_modules
    from presso.objectives import EvalContext, TrialContext, get_objective, measure_all, prepare_all
    from presso.objectives import COMPRESSION_KEY
    from presso.search._evaluator import CompressionAssets
    from presso.spaces import load_space

    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        where = f"{props.name} (sm{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        where = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    dense, described, real = load(device, torch.float32)
    print(f"# gpu_check on {where}; torch {torch.__version__}; model: {described}")
    bound = load_space("builtin:smollm2-135m").bind(list(compressible_modules(dense)),
                                                    exact_names=list(embedding_modules(dense)))
    vocab = dense.config.vocab_size
    eval_ids = torch.randint(0, vocab, (args.sequences, args.seq_len), generator=torch.Generator().manual_seed(2))
    ctx = EvalContext(task="causal-lm", device=device, input_ids=eval_ids, dense_model=dense)
    objectives = [get_objective("ppl_ratio"), get_objective("size_fraction")]
    fake = get_objective("latency_ms", batch_size=1, warmup=2, repeats=7)
    kernel = get_objective("latency_kernel_ms", context=32, warmup=3, repeats=15)
    t = time.perf_counter()
    prepare_all([*objectives, fake, kernel], ctx)
    prepare_s = time.perf_counter() - t
    assets = CompressionAssets(dense, RandomText(vocab, device), cache_ranks=True)

    def floor():
        with torch.inference_mode():
            for ids, mask in ctx.batches():
                dense(input_ids=ids, attention_mask=mask)

    time_cuda(floor, device)  # warm-up (kernels, allocator)
    floors = [time_cuda(floor, device) for _ in range(3)]
    floor_s = statistics.median(floors)
    trial_ctx = TrialContext(number=None, size_bytes=1, dense_bytes=2)
    dense_fake = fake.measure(dense, ctx, trial_ctx)
    dense_kernel = kernel.measure(dense, ctx, TrialContext(number=None, size_bytes=1, dense_bytes=2))
    print(f"setup: objectives' dense references {prepare_s:.2f} s; floor (dense forward over {args.sequences}x"
          f"{args.seq_len} tokens) median {floor_s * 1000:.1f} ms")
    print(f"dense model: latency_ms (batch 1 x {args.seq_len}) {dense_fake:.2f} ms; latency_kernel_ms (decode "
          f"step, batch 1) {dense_kernel:.2f} ms")
    header = ("| plan | copy | prune | quant | size | evaluate | trial | trial/floor | ppl_ratio (random tokens) | size | "
              "latency_ms | latency_kernel_ms | kernels |")
    print("\n" + header + "\n" + "|---" * 13 + "|")
    rows = []
    for name, plan in plans(bound, None):
        floor_s = time_cuda(floor, device)  # measured next to each plan: load from other jobs affects both alike
        floors.append(floor_s)
        for attempt in range(2):  # the first pass also pays one-off costs (calibration, rank sorting)
            t0 = time.perf_counter()
            model, result = assets.compress(plan, reuse=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            trial = TrialContext(number=None, size_bytes=result.size.file_bytes, dense_bytes=result.size.dense_bytes)
            trial.cache[COMPRESSION_KEY] = result
            values = measure_all(objectives, model, ctx, trial)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t2 = time.perf_counter()
        lat_fake = fake.measure(model, ctx, trial)
        lat_kernel = kernel.measure(model, ctx, trial)
        tm = result.timings
        size_s = max(tm["total_s"] - tm["prune_s"] - tm["quant_s"] - tm["recovery_s"], 0.0)
        trial_s = t2 - t0
        rows.append(trial_s / floor_s)
        ppl = f"{values['ppl_ratio']:.3f}" if real else "n/a"
        print(f"| {name} | {tm['copy_s']:.3f} | {tm['prune_s']:.3f} | {tm['quant_s']:.3f} | {size_s:.3f} | "
              f"{t2 - t1:.3f} | {trial_s:.3f} | {trial_s / floor_s:.2f} | {ppl} | {values['size_fraction']:.3f} | "
              f"{lat_fake:.2f} | {lat_kernel:.2f} | {kernel.last_report.summary()} |", flush=True)
        del model
    print(f"\nfloor median {statistics.median(floors) * 1000:.1f} ms over {len(floors)} runs (one before each plan)")
    print(f"trial/floor median {statistics.median(rows):.2f} (target <= 1.5; second pass of each plan, so "
          f"one-off calibration and rank sorting are excluded); total {time.perf_counter() - started_all:.0f} s")
    if device.startswith("cuda"):
        print("note: copy..trial are synchronized wall times; the prune/quant split inside compress_ is only "
              "approximate on CUDA (kernels run asynchronously)")
    if not real:
        print("note: random weights and random tokens: ppl_ratio is not meaningful, timings are")
    if args.vllm:
        vllm_table(dense, eval_ids[0, :64].tolist())
    return 0


def vllm_table(dense, prompt: list[int]) -> None:
    """Decode speed of uniform compressed-tensors recipes in vLLM, and the kernel vLLM chose."""
    import copy
    import logging
    import tempfile

    import torch

    from presso.compress import compress_
    from presso.objectives._vllm_latency import time_decode, vllm_unavailable
    from presso.plan import LayerConfig, Plan, QuantConfig
    from presso.targets import get_target

    reason = vllm_unavailable()
    if reason is not None:
        print(f"\nvllm: skipped: {reason}")
        return
    chosen: list[str] = []

    class KernelLog(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if "Kernel" in message and "Using" in message:
                chosen.append(message)

    logging.getLogger("vllm").addHandler(KernelLog())
    target = get_target("compressed-tensors")
    cpu_dense = copy.deepcopy(dense).to("cpu", dtype=torch.float16)
    print("\n| recipe (compressed-tensors, vLLM fp16) | folder bytes | decode ms/token | kernel vLLM logged |\n|---|---:|---:|---|")
    for name, quant in [("dense fp16", None), ("W8A16 per channel", QuantConfig(bits=8, group_size=0, symmetric=True)),
                        ("W4A16 g128", QuantConfig(bits=4, group_size=128, symmetric=True)),
                        ("W4A16 g32", QuantConfig(bits=4, group_size=32, symmetric=True))]:
        model = copy.deepcopy(cpu_dense)
        result = compress_(model, Plan() if quant is None else Plan(layers={"re:.*": LayerConfig(quant=quant)}))
        chosen.clear()
        with tempfile.TemporaryDirectory(prefix="presso-gpu-vllm-") as tmp:
            written = target.write(model, result, None, Path(tmp) / "ct")
            decode_s = time_decode(written.path, prompt, 32, 3, 0.3)
        kernel = chosen[0] if chosen else "(none logged)"
        print(f"| {name} | {written.on_disk_bytes:,} | {1000 * decode_s / 32:.2f} | {kernel[:120]} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
