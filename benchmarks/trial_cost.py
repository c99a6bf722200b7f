"""Where a trial's wall time goes, against the floor of one bare evaluation forward pass.

A real study runs through :func:`presso.search.run_study` (SQLite store in a temporary folder,
MLflow tracking to a temporary SQLite store unless ``--no-tracking``). Per trial it reports:

* ``copy``: the per-trial model copy (or the restore of the reused work model);
* ``prune``, ``quant``, ``recovery``, ``size``: inside ``compress_`` (``size`` = size prediction);
* ``evaluate``: the objectives' forward pass(es);
* ``store+driver``: everything else in the study loop (ask, tell, user attributes, budget
  snapshot, heartbeat): the trial's wall time minus the above;
* ``tracking``: wall time the MLflow tracker's background thread spent logging, per trial; it
  runs concurrently, so what it costs the study is the difference to a ``--no-tracking`` run.

The floor is one forward pass of the UNCOMPRESSED model over the same evaluation batches,
measured between trials (interleaved, so load from other processes affects both alike).

    python benchmarks/trial_cost.py [--model builtin:smollm2-135m] [--trials 12] [--no-tracking]

Targets (issue 7): trial time / floor <= 1.5; store + tracking <= 5 % of trial time.

``--methods rtn gptq`` measures quantizer cost instead (issue 12): ``--plans`` plans drawn at
random from the model's default space, each run once per method (every block layer on that
method, the same draws otherwise) through the study's :class:`Evaluator`. The first pass is
the first touch (input Hessians collected once, every layer choice quantized); later passes
find the per-worker layer cache warm. It prints the median trial time per method and pass,
warm GPTQ / warm RTN (target <= 1.2), the first-touch cost (Hessians, factorisations and GPTQ
per layer choice, and that cost times the number of distinct GPTQ layer choices the default
space offers) and the layer cache's hit rate.

    python benchmarks/trial_cost.py --methods rtn gptq [--plans 4] [--repeats 3] --threads 1
``--threads 1`` is what the RESULTS.md figures used (2 shared cores: one thread was faster).
SmolLM2-135M note: its weights were stored upstream as GGUF Q4_1, so the "dense" model already
lies on a 4-bit grid (Presso's integer-zero-point 4-bit g32 does not match it); this affects
quality figures, not the timings reported here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presso.search import EvalConfig, StudyConfig, StudyObserver, run_study  # noqa: E402
from presso.search._evaluator import Evaluator  # noqa: E402

COMPONENTS = ("copy", "prune", "quant", "recovery", "size", "evaluate", "store+driver", "tracking")


def bare_forward_s(evaluator) -> float:
    """One forward pass of the dense model over the evaluation batches (the floor)."""
    import torch

    model, ctx = evaluator.loaded.model, evaluator.context
    started = time.perf_counter()
    with torch.inference_mode():
        for ids, mask in ctx.batches():
            model(input_ids=ids, attention_mask=mask)
    return time.perf_counter() - started


class TrialClock(StudyObserver):
    """Per-trial wall time between consecutive ``on_trial_end`` calls, with a floor measured in
    between (its own time is taken out of the next interval)."""

    def __init__(self, evaluator, floor_every: int = 2):
        self.evaluator, self.floor_every = evaluator, floor_every
        self.walls: list[float] = []
        self.floors: list[float] = []
        self.trials = []
        self._last = None

    def on_run_start(self, study, config) -> None:
        self.floors.append(bare_forward_s(self.evaluator))
        self._last = time.perf_counter()

    def on_trial_end(self, study, trial) -> None:
        now = time.perf_counter()
        self.walls.append(now - self._last)
        self.trials.append(trial)
        if len(self.walls) % self.floor_every == 0:
            self.floors.append(bare_forward_s(self.evaluator))
        self._last = time.perf_counter()


def measure(model: str, trials: int, tracking: bool, sampler: str, seq: int, seq_len: int) -> dict:
    import torch

    objectives = ("ppl_ratio", "size_fraction") if not model.endswith(("minilm-l6", "bert")) else (
        "embedding_cosine", "size_fraction")
    space = {"builtin:smollm2-135m": "builtin:smollm2-135m", "builtin:minilm-l6": "builtin:minilm-l6"}.get(
        model, "builtin:tiny")
    with tempfile.TemporaryDirectory(prefix="presso-cost-", ignore_cleanup_errors=True) as tmp:
        config = StudyConfig(
            name="trial-cost", model=model, space=space, objectives=objectives, sampler=sampler, trials=trials,
            device="cpu", storage=f"sqlite:///{tmp}/studies.db",
            tracking_uri=f"sqlite:///{tmp}/mlflow.db" if tracking else None,
            eval=EvalConfig(sequences=seq, seq_len=seq_len),
            warm_start=False,
        )
        started = time.perf_counter()
        evaluator = Evaluator(config)
        setup_s = time.perf_counter() - started
        clock = TrialClock(evaluator)
        observers = [clock]
        tracker = None
        if tracking:
            from presso.search.tracking import MlflowTracker

            tracker = MlflowTracker(config.tracking_uri)
            observers.append(tracker)
        run_study(config, observers=observers, progress=False, evaluator=evaluator)
        tracking_s = tracker.seconds_spent if tracker else 0.0
    rows = []
    for trial, wall in zip(clock.trials, clock.walls):
        t = dict(trial.user_attrs.get("timings") or {})
        if trial.state.name != "COMPLETE":
            continue
        compress = t.get("compress_s", 0.0)
        size = t.get("size_s", max(compress - t.get("prune_s", 0) - t.get("quant_s", 0) - t.get("recovery_s", 0), 0))
        inner = t.get("copy_s", 0.0) + compress + t.get("evaluate_s", 0.0)
        rows.append({
            "wall": wall, "copy": t.get("copy_s", 0.0), "prune": t.get("prune_s", 0.0), "quant": t.get("quant_s", 0.0),
            "recovery": t.get("recovery_s", 0.0), "size": size, "evaluate": t.get("evaluate_s", 0.0),
            "store+driver": max(wall - inner, 0.0), "tracking": tracking_s / max(len(clock.trials), 1),
        })
    return {"model": model, "setup_s": setup_s, "rows": rows, "floors": clock.floors,
            "threads": torch.get_num_threads(), "eval": f"{seq} x {seq_len} tokens"}


def space_layer_choices(bound) -> int:
    """Distinct (module, GPTQ choice) pairs a space offers: per unit, the product of its
    sparsity, bits (quantized ones) and group-size choices, times the unit's modules."""
    from presso.spaces import Fixed

    total = 0
    for unit in bound.units:
        group = unit.group
        if isinstance(group.method, Fixed) and group.method.value != "gptq":
            continue
        if not isinstance(group.method, Fixed) and "gptq" not in group.method.grid(5):
            continue
        n = 1
        for key in ("sparsity", "group_size", "structure"):
            domain = getattr(group, key)
            n *= 1 if isinstance(domain, Fixed) else len(domain.grid(20))
        bits = [1] if isinstance(group.bits, Fixed) else [b for b in group.bits.grid(20) if int(b) != 16]
        total += n * len(bits) * len(unit.modules)
    return total


def with_method(bound, seed: int, method: str):
    """A random plan from ``bound`` whose quantized block layers all use ``method`` (same draws
    for every method: the method is not drawn)."""
    import random

    from presso.spaces import Choice, FloatRange, IntRange

    rng = random.Random(seed)

    def ask(name, domain):
        if name.endswith("/method"):
            return method if method in domain.values else domain.values[0]
        if isinstance(domain, Choice):
            return rng.choice(list(domain.values))
        if isinstance(domain, (FloatRange, IntRange)):
            return rng.choice(list(domain.grid(20)))
        raise TypeError(type(domain).__name__)

    return bound.sample(ask)


def measure_methods(model: str, methods, plans: int, repeats: int, seq: int, seq_len: int) -> str:
    import torch

    from presso.compress.quantizers.gptq import FACTORS

    objectives = ("ppl_ratio", "size_fraction") if not model.endswith(("minilm-l6", "bert")) else (
        "embedding_cosine", "size_fraction")
    space = {"builtin:smollm2-135m": "builtin:smollm2-135m", "builtin:minilm-l6": "builtin:minilm-l6"}.get(
        model, "builtin:tiny")
    config = StudyConfig(name="trial-cost-methods", model=model, space=space, objectives=objectives, trials=1,
                         device="cpu", eval=EvalConfig(sequences=seq, seq_len=seq_len), warm_start=False)
    evaluator = Evaluator(config)
    bound = evaluator.bound
    drawn = {m: [with_method(bound, seed, m) for seed in range(plans)] for m in methods}
    probe = drawn[methods[0]][0]
    started = time.perf_counter()
    evaluator.assets.calibration(probe.calibration_samples, probe.calibration_seq_len, hessians=True)
    hessian_s = time.perf_counter() - started
    walls = {(m, p): [] for m in methods for p in ("first", "warm")}
    quants = {(m, p): [] for m in methods for p in ("first", "warm")}
    for rep in range(1 + repeats):
        phase = "first" if rep == 0 else "warm"
        for i in range(plans):
            for m in methods:
                cache = evaluator.assets.layer_cache
                before = (cache.hits, cache.misses) if cache is not None else (0, 0)
                started = time.perf_counter()
                outcome = evaluator.evaluate(drawn[m][i])
                walls[(m, phase)].append(time.perf_counter() - started)
                quants[(m, phase)].append(outcome.timings.get("quant_s", 0.0))
    cache = evaluator.assets.layer_cache
    n_choices = space_layer_choices(bound)
    lines = [
        f"model {model}: {plans} plans from {space} x methods {list(methods)}; 1 first pass + {repeats} warm "
        f"passes; eval {seq} x {seq_len} tokens; torch threads {torch.get_num_threads()}",
        "",
        f"| {'method':<8} | {'pass':<6} | {'trial s (median)':>16} | {'quant s (median)':>16} |",
        f"|{'-' * 10}|{'-' * 8}|{'-' * 18}|{'-' * 18}|",
    ]
    for m in methods:
        for p in ("first", "warm"):
            lines.append(f"| {m:<8} | {p:<6} | {statistics.median(walls[(m, p)]):>16.3f} | "
                         f"{statistics.median(quants[(m, p)]):>16.3f} |")
    lines.append("")
    if "rtn" in methods and "gptq" in methods:
        ratio = statistics.median(walls[("gptq", "warm")]) / statistics.median(walls[("rtn", "warm")])
        lines.append(f"warm GPTQ trial / warm RTN trial = {ratio:.2f} (target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'})")
        # Paired per plan (same draws, only the method differs), then the median.
        layers = [sum(1 for c in p.layers.values() if c.quant.active and c.quant.method == "gptq") for p in drawn["gptq"]]
        extra = [g - r for g, r in zip(quants[("gptq", "first")], quants[("rtn", "first")])]
        per_layer = statistics.median(e / max(n, 1) for e, n in zip(extra, layers))
        per_trial, gptq_layers = statistics.median(extra), statistics.median(layers)
        lines += [
            f"first touch: input Hessians {hessian_s:.1f} s once per worker ({probe.calibration_samples} x "
            f"{probe.calibration_seq_len} tokens, with the Wanda statistics); GPTQ {per_layer:.3f} s per layer "
            f"choice over RTN (median first-pass trial: {per_trial:.1f} s for {gptq_layers} layers)",
            f"first touch of the whole default space: {n_choices} distinct GPTQ layer choices x {per_layer:.3f} s "
            f"= {n_choices * per_layer / 3600:.2f} h (computed from the per-layer cost; a study touches only what it samples)",
        ]
    if cache is not None:
        lines.append(f"layer cache: {cache.hits} hits / {cache.hits + cache.misses} lookups = hit rate "
                     f"{cache.hit_rate:.2f} ({len(cache)} layouts held); inverse-Hessian factors: {FACTORS.misses} "
                     f"computed, {FACTORS.hits} reused")
    return "\n".join(lines)


def report(result: dict) -> str:
    rows, floors = result["rows"], result["floors"]
    if not rows:
        return f"{result['model']}: no complete trial"
    med = {k: statistics.median(r[k] for r in rows) for k in ("wall", *COMPONENTS)}
    floor = statistics.median(floors)
    lines = [
        f"model {result['model']}: {len(rows)} complete trials, eval {result['eval']}, torch threads "
        f"{result['threads']}, setup {result['setup_s']:.1f} s",
        f"floor (bare dense forward over the eval batches): median {floor:.3f} s, min {min(floors):.3f} s "
        f"over {len(floors)} interleaved runs",
        "",
        f"| {'part':<14} | {'median s':>9} | {'% of trial':>10} |",
        f"|{'-' * 16}|{'-' * 11}|{'-' * 12}|",
    ]
    for k in COMPONENTS:
        lines.append(f"| {k:<14} | {med[k]:>9.3f} | {100 * med[k] / med['wall']:>9.1f}% |")
    lines.append(f"| {'trial (wall)':<14} | {med['wall']:>9.3f} | {100.0:>9.1f}% |")
    ratio = med["wall"] / floor
    serial = med["store+driver"] / med["wall"]
    lines += [
        "",
        f"trial / floor = {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})",
        f"store+driver = {100 * serial:.1f}% of trial time (serial, in the study loop)",
    ]
    if med["tracking"]:
        lines.append(f"tracking: the MLflow thread was busy {100 * med['tracking'] / med['wall']:.1f}% of trial time "
                     "(concurrent, start-up included; its cost to the study is the difference to a --no-tracking run)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--sampler", default="random")
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--no-tracking", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice, one per core)")
    parser.add_argument("--methods", nargs="+", help="compare quantizer cost (e.g. rtn gptq) instead of a study")
    parser.add_argument("--plans", type=int, default=4, help="--methods: plans drawn from the default space")
    parser.add_argument("--repeats", type=int, default=2, help="--methods: warm passes over the plans")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.methods:
        print(measure_methods(args.model, args.methods, args.plans, args.repeats, args.sequences, args.seq_len))
        return 0
    result = measure(args.model, args.trials, not args.no_tracking, args.sampler, args.sequences, args.seq_len)
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
