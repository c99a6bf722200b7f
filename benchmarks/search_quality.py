"""Does the search beat uniform recipes? Uniform grid vs random search vs Presso's default search.

For each model, ONE :class:`~presso.search.Evaluator` (model, text, dense references and
calibration statistics computed once) serves every arm; each arm is a real study run through
:func:`presso.search.run_study` in a temporary SQLite store:

* ``uniform``: every uniform plan of the default space (``BoundSpace.uniform_choices``), the
  embedding table included ("quantize everything to 4 bits");
* ``uniform+embed``: a stronger baseline, every uniform plan of the block Linears with each bit
  width the embedding table offers (measured directly, no study);
* ``random@N`` and ``random@3N``: random search (``random@N`` is the first N trials of the
  3N-trial run, which is itself a random search of N trials);
* ``presso``: the default sampler (or ``--sampler``) with the default warm start
  (sensitivity-guided per-unit and per-group plans, spread-out uniform plans), N trials;
* ``nsga2``: the same with NSGA-II, when ``presso`` uses another sampler;
* ``presso+mf``: ``presso`` with multi-fidelity on (a quarter of the text first).

Evaluation is deterministic, so a plan measured by one arm is not measured again by another
(a cache keyed by the plan); each arm is still charged the time its plans cost when measured,
so the time columns are what each arm would cost on its own.

Reported per model: hypervolume with ONE reference point shared by all arms, the quality gap
to the uncompressed model at matched sizes (best quality with size <= X read off each front),
and the searched plans' per-unit choices.

    python benchmarks/search_quality.py                       # full: both models, N = 100
    python benchmarks/search_quality.py --quick               # smoke: N = 20, short text
    python benchmarks/search_quality.py --models minilm --trials 50 --no-write

SmolLM2-135M ships as GGUF Q4_1 (4-bit, groups of 32 with scale and minimum), so its "dense"
weights lie on a 4-bit grid (Presso's integer-zero-point 4-bit g32 does not match it and is not
free there); MiniLM has ordinary fp32 weights.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presso.search import EvalConfig, Evaluator, StudyConfig, load_existing_study, run_study  # noqa: E402
from presso.search._evaluator import Outcome  # noqa: E402
from presso.search._records import trial_rows  # noqa: E402

Q4_1_NOTE = ("SmolLM2-135M ships as GGUF Q4_1 (4-bit, blocks of 32 with scale and minimum), so its 'dense' "
             "weights lie on a 4-bit grid; Presso's integer-zero-point 4-bit g32 does not match that grid and is not "
             "free on it (ppl 39.8 -> 48.4 in benchmarks/compress_models.py), but results on this model carry the "
             "caveat. MiniLM-L6 has ordinary fp32 weights.")


@dataclass(frozen=True)
class ModelSetup:
    key: str
    ref: str
    quality: str  # the quality objective
    direction: str
    dense_quality: float  # the uncompressed model's value of the quality objective
    quality_floor: float  # hypervolume reference for the quality objective (a plan worse than this is unusable)
    sequences: int
    seq_len: int


# Matched sizes for the quality-gap table, as fractions of the uniform 8-bit plan's size (the
# hypervolume's size reference), so they follow the space instead of being tuned to it.
MATCHED = (0.6, 0.7, 0.8)

MODELS = {
    # The default spaces include the token embedding tables (21% of SmolLM2's fp32 bytes, tied
    # to its output head; 52% of MiniLM's) as one unit next to the block Linears.
    "smollm2": ModelSetup("smollm2", "builtin:smollm2-135m", "ppl_ratio", "minimize", 1.0, 2.0, 8, 128),
    "minilm": ModelSetup("minilm", "builtin:minilm-l6", "embedding_cosine", "maximize", 1.0, 0.90, 32, 64),
}


class CachingEvaluator:
    """An :class:`Evaluator` whose ``evaluate`` remembers plans it measured (evaluation is
    deterministic), and charges every call what its measurement cost the first time."""

    def __init__(self, inner: Evaluator):
        self.inner = inner
        self.cache: dict[tuple, dict] = {}
        self.charged = 0.0  # seconds charged to the current arm
        self.measured = 0.0  # seconds really spent measuring (all arms)
        self.hits = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def evaluate(self, plan, number=None, *, promote=None, fidelity="full") -> Outcome:
        from presso.plan import plan_to_dict

        key = json.dumps(plan_to_dict(plan), sort_keys=True)
        entry = self.cache.setdefault(key, {})
        if fidelity == "low" or promote is not None:
            if "low" not in entry:
                started = time.perf_counter()
                out = self.inner.evaluate(plan, number, fidelity="low")
                entry["low"], entry["low_s"] = out, time.perf_counter() - started
                self.measured += entry["low_s"]
            else:
                self.hits += 1
            self.charged += entry["low_s"]
            low = entry["low"]
            if fidelity == "low" or not promote(low.low_values):
                return replace(low, timings=dict(low.timings))
        if "full" not in entry:
            started = time.perf_counter()
            out = self.inner.evaluate(plan, number)
            entry["full"], entry["full_s"] = out, time.perf_counter() - started
            self.measured += entry["full_s"]
        else:
            self.hits += 1
        # With a low-fidelity look first, the full measurement reuses the compressed model:
        # charge the evaluation part only.
        full = entry["full"]
        cost = entry["full_s"]
        if promote is not None:
            cost = full.timings.get("evaluate_s", cost)
        self.charged += cost
        low_values = entry["low"].low_values if promote is not None else None
        return replace(full, timings=dict(full.timings), low_values=low_values)


@dataclass
class Arm:
    name: str
    trials: int
    points: list[tuple[float, float]] = field(default_factory=list)  # complete trials (quality, size), in order
    rows: list = field(default_factory=list)
    charged: list[float] = field(default_factory=list)  # cumulative charged seconds after each trial
    seconds: float = 0.0
    warm_charged: float = 0.0
    pruned: int = 0
    notes: list[str] = field(default_factory=list)


class ChargeClock:
    """Observer recording the cumulative charged time after each trial."""

    def __init__(self, evaluator: CachingEvaluator, arm: Arm):
        self.evaluator, self.arm = evaluator, arm

    def on_run_start(self, study, config):
        self.arm.warm_charged = self.evaluator.charged  # probes measured while warm-starting

    def on_trial_end(self, study, trial):
        self.arm.charged.append(self.evaluator.charged)

    def on_run_end(self, study, status):
        pass


def run_arm(evaluator: CachingEvaluator, base: StudyConfig, name: str, **changes) -> Arm:
    config = replace(base, name=name, **changes)
    arm = Arm(name=name, trials=config.trials)
    evaluator.charged = 0.0
    started = time.perf_counter()
    run_study(config, progress=False, evaluator=evaluator, observers=[ChargeClock(evaluator, arm)])
    arm.seconds = evaluator.charged
    study = load_existing_study(name, config.storage)
    warm = study.user_attrs.get("warm_start", {})
    arm.rows = trial_rows(study)
    q = base.objectives[0]
    arm.points = [(r.values[q], r.values["size_fraction"]) for r in arm.rows if r.state == "COMPLETE"]
    arm.pruned = sum(r.state == "PRUNED" and "low_values" in r.user_attrs for r in arm.rows)
    if warm.get("seconds"):
        # Warm-start work outside evaluate() (weight-error proxies, front lookup) is charged too.
        extra = max(0.0, sum(warm["seconds"].values()) - arm.warm_charged)
        arm.charged = [c + extra for c in arm.charged]
        arm.seconds += extra
        arm.notes.append(f"{name} warm start " + ", ".join(f"{k} {v:.1f}s" for k, v in warm["seconds"].items()))
    print(f"  {name}: {len(arm.rows)} trials ({arm.pruned} stopped at low fidelity), charged {arm.seconds:.0f}s, "
          f"wall {time.perf_counter() - started:.0f}s", flush=True)
    return arm


def run_plans(evaluator: CachingEvaluator, name: str, params_list: list[dict], bound, quality: str) -> Arm:
    """An arm of fixed plans measured directly (no sampler): each ``params`` dict is one plan."""
    from presso.search._records import TrialRow

    arm = Arm(name=name, trials=len(params_list))
    evaluator.charged = 0.0
    for number, params in enumerate(params_list):
        plan = bound.sample(lambda key, domain, p=params: p[key])
        outcome = evaluator.evaluate(plan, number)
        arm.rows.append(TrialRow(number=number, state="COMPLETE", values=dict(outcome.values), params=dict(params)))
        arm.points.append((outcome.values[quality], outcome.values["size_fraction"]))
        arm.charged.append(evaluator.charged)
    arm.seconds = evaluator.charged
    print(f"  {name}: {len(arm.rows)} plans, charged {arm.seconds:.0f}s", flush=True)
    return arm


def uniform_with_free_embedding(bound, embedding_names) -> list[dict]:
    """Every uniform plan of the block Linears, each with every bit width the embedding unit
    offers at its finest group size (the stronger baseline: "quantize the layers uniformly,
    pick the table's bits")."""
    embed_units = [u for u in bound.units if set(u.modules) <= set(embedding_names)]
    plans, seen = [], set()
    for combo in bound.uniform_choices():
        base = bound.params_for(combo)
        for unit in embed_units:
            groups = getattr(unit.group.group_size, "values", None)
            for bits in unit.group.bits.values:
                params = dict(base)
                for key in [k for k in params if k.startswith(unit.param(""))]:
                    del params[key]
                choice = {"bits": bits} if bits == 16 or not groups else {"bits": bits, "group_size": min(groups)}
                params.update({unit.param(k): v for k, v in choice.items()})
                signature = tuple(sorted(params.items()))
                if signature not in seen:
                    seen.add(signature)
                    plans.append(params)
    return plans


def front(points, directions):
    from presso.objectives import pareto_front

    return pareto_front(points, directions)


def hv(points, setup: ModelSetup, reference) -> float:
    from presso.objectives import hypervolume

    return hypervolume(points, reference, [setup.direction, "minimize"])


def eight_bit_size(arm: "Arm") -> float:
    """Size of the uniform 8-bit, unpruned plan (the largest such one): the hypervolume's size
    reference. Both models lose next to nothing at 8 bits, so the hypervolume measures what a
    search wins below the safe recipe everyone tries first."""
    sizes = [r.values["size_fraction"] for r in arm.rows if r.state == "COMPLETE"
             and all(v == 8 for k, v in r.params.items() if k.endswith("/bits"))
             and all(v == 0 for k, v in r.params.items() if k.endswith("/sparsity"))]
    return max(sizes) if sizes else 1.0


def best_at(points, size: float, setup: ModelSetup):
    fits = [p for p in points if p[1] <= size + 1e-12]
    if not fits:
        return None
    return min(fits, key=lambda p: p[0]) if setup.direction == "minimize" else max(fits, key=lambda p: p[0])


def gap(point, setup: ModelSetup):
    """Quality lost against the uncompressed model: ppl_ratio - 1, or 1 - cosine."""
    if point is None:
        return None
    return point[0] - setup.dense_quality if setup.direction == "minimize" else setup.dense_quality - point[0]


def time_to_hv(arm: Arm, target: float, setup: ModelSetup, reference):
    pts = []
    complete = [r for r in arm.rows if r.user_attrs.get("cancelled") is None and r.state in ("COMPLETE", "PRUNED", "FAIL")]
    for row, t in zip(complete, arm.charged):
        if row.state == "COMPLETE":
            pts.append((row.values[setup.quality], row.values["size_fraction"]))
            if hv(pts, setup, reference) >= target - 1e-12:
                return t
    return None


def unit_choices_text(row, bound) -> str:
    """``attn/blocks0-4 s0.2 4b g32`` per unit, from a trial's parameters."""
    parts = []
    for unit in bound.units:
        p = {k.rsplit("/", 1)[1]: v for k, v in row.params.items() if k.startswith(unit.param(""))}
        fixed = {k: getattr(unit.group, k) for k in ("sparsity", "bits", "group_size")}
        s = p.get("sparsity", getattr(fixed["sparsity"], "value", 0.0))
        b = p.get("bits", getattr(fixed["bits"], "value", 16))
        g = p.get("group_size", getattr(fixed["group_size"], "value", 0))
        text = f"{unit.param('')[:-1]} s{s:g} {b}b" + (f" g{g}" if b != 16 else "")
        parts.append(text)
    return "; ".join(parts)


def run_model(setup: ModelSetup, trials: int, quick: bool, tmp: str, sampler: str | None = None) -> dict:
    directions = [setup.direction, "minimize"]
    seq = max(2, setup.sequences // 2) if quick else setup.sequences
    base = StudyConfig(name="base", model=setup.ref, space=setup.ref, objectives=(setup.quality, "size_fraction"),
                       trials=trials, device="cpu", storage=f"sqlite:///{tmp}/{setup.key}.db", tracking_uri=None,
                       eval=EvalConfig(sequences=seq, seq_len=setup.seq_len))
    if sampler:
        base = replace(base, sampler=sampler)
    started = time.perf_counter()
    inner = Evaluator(base)
    setup_s = time.perf_counter() - started
    evaluator = CachingEvaluator(inner)
    combos = inner.bound.uniform_choices()
    print(f"# {setup.ref}: setup {setup_s:.1f}s, {len(inner.bound.units)} units, {len(combos)} uniform plans; "
          f"eval {seq} x {setup.seq_len} tokens", flush=True)
    arms = {"uniform": run_arm(evaluator, base, "uniform", sampler="uniform", trials=len(combos), warm_start=False)}
    arms["uniform+embed"] = run_plans(evaluator, "uniform+embed", uniform_with_free_embedding(inner.bound, inner.embedding_names),
                                      inner.bound, setup.quality)
    random3 = run_arm(evaluator, base, "random3", sampler="random", trials=3 * trials, warm_start=False)
    random1 = Arm(name="random", trials=trials, rows=random3.rows[:trials], charged=random3.charged[:trials])
    random1.points = [(r.values[setup.quality], r.values["size_fraction"]) for r in random1.rows if r.state == "COMPLETE"]
    random1.seconds = random1.charged[-1] if random1.charged else 0.0
    arms["random"] = random1
    arms["random3"] = random3
    arms["presso"] = run_arm(evaluator, base, "presso")
    if base.sampler != "nsga2":
        arms["nsga2"] = run_arm(evaluator, base, "nsga2", sampler="nsga2")
    arms["presso+mf"] = run_arm(evaluator, base, "presso-mf", fidelity={"enabled": True})
    fronts = {k: front(a.points, directions) for k, a in arms.items()}
    reference = (setup.quality_floor, eight_bit_size(arms["uniform"]))
    sizes = tuple(round(f * reference[1], 3) for f in MATCHED)
    result = {"setup": setup, "setup_s": setup_s, "arms": arms, "fronts": fronts, "bound": inner.bound,
              "reference": reference, "hv": {k: hv(a.points, setup, reference) for k, a in arms.items()},
              "hv_dense_ref": {k: hv(a.points, setup, (setup.quality_floor, 1.0)) for k, a in arms.items()},
              "measured_s": evaluator.measured, "hits": evaluator.hits, "eval": f"{seq} x {setup.seq_len} tokens",
              "uniform_plans": len(combos), "sizes": sizes, "sampler": base.sampler}
    # multi-fidelity: time to reach the hypervolume the plain search ended with
    target = result["hv"]["presso"]
    result["mf_time_to_target"] = time_to_hv(arms["presso+mf"], target, setup, reference)
    result["presso_time_to_target"] = time_to_hv(arms["presso"], target, setup, reference)
    del inner, evaluator
    return result


ARM_LABELS = {
    "uniform": "uniform grid",
    "uniform+embed": "uniform layers x every embedding choice",
    "nsga2": "nsga2 + warm start",
    "random": "random search",
    "random3": "random search (3x trials)",
    "presso": "Presso (default sampler + warm start)",
    "presso+mf": "Presso default + multi-fidelity",
}


def _fmt(value, digits=4):
    return "-" if value is None else f"{value:.{digits}f}"


def report(result: dict) -> tuple[str, dict]:
    setup: ModelSetup = result["setup"]
    arms, fronts, hvs, sizes = result["arms"], result["fronts"], result["hv"], result["sizes"]
    lines = [f"### {setup.ref} ({setup.quality} vs size_fraction; eval {result['eval']} of held-out text)", ""]
    if setup.key == "smollm2":
        lines += [f"> {Q4_1_NOTE}", ""]
    gap_label = "ppl_ratio - 1" if setup.direction == "minimize" else "1 - cosine"
    ref, dense_hvs = result["reference"], result["hv_dense_ref"]
    head = (f"| arm | trials | complete | stopped early | charged time | hypervolume | HV / uniform "
            f"| HV / uniform (size ref 1.0) | " + " | ".join(f"gap @ <= {s:.3f}" for s in sizes) + " |")
    lines += [f"Hypervolume reference point, shared by every arm: {setup.quality} = {ref[0]} (worse is unusable) "
              f"and size_fraction = {ref[1]:.4f}, the size of the uniform 8-bit unpruned plan (near-lossless on "
              "this model, so the hypervolume measures what is won below the safe recipe); the column with size "
              f"reference 1.0 (dense) is given for comparison. Gap = {gap_label} of the best plan with "
              "size_fraction <= X on each arm's front ('-': the front has no plan that small).", "", head,
              "|" + "---|" * (8 + len(sizes))]
    uniform_hv = hvs["uniform"] or float("nan")
    uniform_dense = dense_hvs["uniform"] or float("nan")
    gaps = {}
    for key, arm in arms.items():
        g = [gap(best_at(fronts[key], s, setup), setup) for s in sizes]
        gaps[key] = g
        complete = len(arm.points)
        label = ARM_LABELS[key].replace("default sampler", result["sampler"])
        lines.append(f"| {label} | {len(arm.rows)} | {complete} | {arm.pruned} | {arm.seconds:.0f} s | "
                     f"{hvs[key]:.5f} | {hvs[key] / uniform_hv:.2f}x | {dense_hvs[key] / uniform_dense:.2f}x | "
                     + " | ".join(_fmt(x) for x in g) + " |")
    lines.append("")
    # targets
    checks = []
    ratio_u = hvs["presso"] / uniform_hv if uniform_hv else float("nan")
    checks.append(("hypervolume >= 1.2x the uniform grid's", ratio_u >= 1.2, f"{ratio_u:.2f}x"))
    checks.append(("hypervolume >= random search with 3x the trials", hvs["presso"] >= hvs["random3"],
                   f"{hvs['presso']:.5f} vs {hvs['random3']:.5f}"))
    ratio_e = hvs["presso"] / hvs["uniform+embed"] if hvs["uniform+embed"] else float("nan")
    checks.append(("(stronger baseline) hypervolume >= 1.2x uniform layers x every embedding choice", ratio_e >= 1.2,
                   f"{ratio_e:.2f}x"))
    for s, gp, gu in zip(sizes, gaps["presso"], gaps["uniform"]):
        if gu is None and gp is None:
            checks.append((f"gap at <= {s:.3f} at most half the best uniform plan's", None, "no plan that small"))
        elif gu is None:
            checks.append((f"gap at <= {s:.3f} at most half the best uniform plan's", True,
                           f"{_fmt(gp)} (no uniform plan that small)"))
        elif gp is None:
            checks.append((f"gap at <= {s:.3f} at most half the best uniform plan's", False, "searched front has none"))
        else:
            ok = gp <= 0.5 * gu + 1e-12
            checks.append((f"gap at <= {s:.3f} at most half the best uniform plan's", ok, f"{_fmt(gp)} vs {_fmt(gu)}"))
    lines += [f"Targets (Presso with {result['sampler']} + warm start, N trials):", ""]
    for text, ok, shown in checks:
        mark = "n/a" if ok is None else ("met" if ok else "NOT met")
        lines.append(f"- {text}: **{mark}** ({shown})")
    mf, base_t = result["mf_time_to_target"], result["presso_time_to_target"]
    arm_mf, arm_p = arms["presso+mf"], arms["presso"]
    lines += ["", f"Multi-fidelity: {arm_mf.pruned} of {len(arm_mf.rows)} trials stopped after the short text; "
              f"charged time {arm_mf.seconds:.0f} s vs {arm_p.seconds:.0f} s without "
              f"({100 * (1 - arm_mf.seconds / arm_p.seconds):.0f}% less); final hypervolume "
              f"{hvs['presso+mf']:.5f} vs {hvs['presso']:.5f}."]
    if mf is not None and base_t is not None:
        lines.append(f"Time to reach the plain search's final hypervolume: {mf:.0f} s with multi-fidelity vs "
                     f"{base_t:.0f} s without ({100 * (1 - mf / base_t):.0f}% saved at equal front quality).")
    else:
        lines.append("With multi-fidelity the search did not reach the plain search's final hypervolume within its "
                     "budget, so no time saving at equal front quality is claimed.")
    lines += ["", f"Searched plans (Presso, {result['sampler']}) at the matched sizes, per unit (s = sparsity, b = bits, g = group):",
              ""]
    q = setup.quality
    for s in sizes:
        point = best_at(fronts["presso"], s, setup)
        if point is None:
            continue
        row = next(r for r in arms["presso"].rows if r.state == "COMPLETE" and
                   (r.values[q], r.values["size_fraction"]) == point)
        source = row.user_attrs.get("seeded", "sampler")
        lines.append(f"- size <= {s:.3f}: trial {row.number} ({source}), {q} {point[0]:.4f}, size {point[1]:.4f}: "
                     f"{unit_choices_text(row, result['bound'])}")
    best_u = [best_at(fronts["uniform"], s, setup) for s in sizes]
    lines += ["", "Best uniform plans at the same sizes:", ""]
    for s, point in zip(sizes, best_u):
        if point is None:
            lines.append(f"- size <= {s:.3f}: none")
            continue
        row = next(r for r in arms["uniform"].rows if r.state == "COMPLETE" and
                   (r.values[q], r.values["size_fraction"]) == point)
        lines.append(f"- size <= {s:.3f}: {q} {point[0]:.4f}, size {point[1]:.4f}: "
                     f"{unit_choices_text(row, result['bound']).split('; ')[0]} (same for every unit)")
    notes = [n for a in arms.values() for n in a.notes]
    lines += ["", f"Setup {result['setup_s']:.0f} s (model, text, dense references); measuring took "
              f"{result['measured_s']:.0f} s in all ({result['hits']} plan measurements reused across arms). "
              + ("; ".join(notes))]
    summary = {"hv": hvs, "gaps": gaps, "checks": [(t, ok, shown) for t, ok, shown in checks], "reference": ref}
    return "\n".join(lines), summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["smollm2", "minilm"])
    parser.add_argument("--trials", type=int, help="N: trials for random search and Presso (default 100; --quick 20)")
    parser.add_argument("--quick", action="store_true", help="smoke run: N = 20 and half the evaluation text")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")), help="results file")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--sampler", help="Presso's sampler (default: the study default); nsga2 is run alongside as well")
    parser.add_argument("--threads", type=int,
                        help="torch threads (default: torch's choice). On a small shared machine 1 is often faster: "
                             "here a SmolLM2 forward took 2.6 s on 1 thread and 7 s on 2 while other jobs ran")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    trials = args.trials or (20 if args.quick else 100)
    command = "python benchmarks/search_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    sections = []
    with tempfile.TemporaryDirectory(prefix="presso-sq-", ignore_cleanup_errors=True) as tmp:
        for key in args.models:
            result = run_model(MODELS[key], trials, args.quick, tmp, args.sampler)
            text, _ = report(result)
            print(text, flush=True)
            sections.append(text)
    total = time.perf_counter() - started
    import torch

    header = [
        "## Search quality: uniform recipes vs random search vs Presso",
        "",
        f"- command: `{command.strip()}`",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {os.cpu_count()} CPU cores, shared with other jobs; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {platform.python_implementation()} {platform.python_version()}",
        f"- N = {trials} trials for random search and Presso; total wall time {total / 60:.1f} min",
        "",
    ]
    text = "\n".join(header + sections) + "\n"
    print(f"\ntotal {total / 60:.1f} min")
    if not args.no_write:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
