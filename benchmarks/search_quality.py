"""Does the search beat the stock recipes at equal file size, on text it never saw? (issue 14)

The protocol, per model and target, side by side in one run:

* **The search selects on its own evaluation text** (the study defaults: windows cut from the
  evaluation documents of ``builtin:lee``, ``lee_background.cor``), in the target's formats (the
  built-in ``*-gguf`` / ``*-ct`` spaces), so its size objective is the bytes of the target's file.
* **Every reported front is re-scored on held-out text the search never saw, in the target's
  runtime**: for ``gguf`` each front plan's ``.gguf`` is written (its bytes must equal the
  trial's ``size_bytes``) and loaded by llama-cpp-python; for ``compressed-tensors`` the
  compressed weights are the ones transformers loads from the folder, to the bit (tests/targets),
  so they are scored in torch, sized by the target's exact byte count. The slices:
  ``builtin:lee-heldout`` (``lee.cor``, other documents than the search's) and a second slice
  far from the search text: the ``mini_newsgroup`` Usenet posts of the gensim wheel (another
  domain and register than the news articles the search saw).
* **Contenders**: Presso's default search (default sampler + warm start, N trials), NSGA-II
  (Optuna's default multi-objective sampler, no warm start, N trials), random search with 3N
  trials, and the stock recipes. For ``gguf``: llama.cpp's own quantizer (``llama_model_quantize``)
  at every stock type on the F32 ``.gguf`` of the dense model, and each again with an importance
  matrix from the search's calibration text (the per-tensor types llama.cpp chose, quantized by
  ggml with the importance matrix: see ``benchmarks/targets.py`` for why). For
  ``compressed-tensors``: llm-compressor's uniform W8A16 and W4A16 recipes, with RTN and with GPTQ.
  Searches run ``--seeds`` times (different sampler seeds); stock recipes are deterministic.

Reported: hypervolume of each arm's re-scored front over ONE reference shared by all arms
(quality floor, size of the stock Q8_0 file), median and range over the seeds; and, at every
stock recipe's file size, the held-out quality gap to dense of the best plan on each front no
larger than that file. "Gap" is ppl_ratio - 1 (perplexity relative to the dense model's on the
same slice) or 1 - embedding_cosine. The targets checked (issue 14): at every stock recipe below
Q4_1's size on SmolLM2 (its weights came from a Q4_1 GGUF, so Q4_1 reproduces them: no credit
there) and at every stock recipe on MiniLM, Presso's gap is at most half that of the best stock
recipe of equal or larger file size (on SmolLM2 among those below Q4_1's size); and Presso's
held-out hypervolume is above random search with 3x the trials on every seed. The table also
gives each recipe's own gap, for the plain per-recipe comparison.

Evaluation is deterministic, so a plan measured by one arm is not measured again by another (a
cache keyed by the plan); each arm is still charged what its plans cost when measured.

    python benchmarks/search_quality.py --models smollm2 minilm --trials 200 --seeds 0 1 2 --threads 1
    python benchmarks/search_quality.py --models minilm --targets compressed-tensors --trials 20 --seeds 0 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from presso.errors import PressoError  # noqa: E402
from presso.objectives import hypervolume  # noqa: E402
from presso.plan import Plan, plan_from_dict, plan_to_dict  # noqa: E402
from presso.search import (  # noqa: E402
    EvalConfig,
    Evaluator,
    Outcome,
    RuntimeScorer,
    StudyConfig,
    load_existing_study,
    pareto_rows,
    run_study,
    trial_rows,
)
from presso.targets import get_target  # noqa: E402
from targets import llama_quantize, stock_plan  # noqa: E402  (one stock-recipe maker for the benchmarks)

# llama.cpp's stock types that need no importance matrix (llama-quantize refuses the IQ1/IQ2/IQ3
# types without one), largest first.
STOCK = ["Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "IQ4_NL",
         "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K"]


@dataclass(frozen=True)
class ModelSetup:
    key: str
    ref: str
    spaces: dict  # target -> the built-in space the search runs in
    quality: str  # the quality objective
    direction: str
    quality_floor: float  # hypervolume reference for the quality objective (worse is unusable)
    heldout: tuple[tuple[str, str, int, int], ...]  # (slice name, text source, windows, tokens per window)
    credit_below: str | None  # stock type whose size caps the targets (SmolLM2: Q4_1, see the module doc)


MODELS = {
    "smollm2": ModelSetup("smollm2", "builtin:smollm2-135m",
                          {"gguf": "builtin:smollm2-135m-gguf", "compressed-tensors": "builtin:smollm2-135m-ct"},
                          "ppl_ratio", "minimize",
                          2.0, (("lee-heldout", "builtin:lee-heldout", 8, 256), ("newsgroups", "newsgroups", 8, 256)),
                          "Q4_1"),
    "minilm": ModelSetup("minilm", "builtin:minilm-l6",
                         {"gguf": "builtin:minilm-l6-gguf", "compressed-tensors": "builtin:minilm-l6-ct"},
                         "embedding_cosine", "maximize",
                         0.90, (("lee-heldout", "builtin:lee-heldout", 32, 128), ("newsgroups", "newsgroups", 32, 128)), None),
}


def gap_of(setup: ModelSetup, value: float) -> float:
    """Quality lost against the dense model: ppl_ratio - 1, or 1 - cosine."""
    return value - 1.0 if setup.direction == "minimize" else 1.0 - value


class CachingEvaluator:
    """An :class:`Evaluator` whose ``evaluate`` remembers plans it measured (evaluation is
    deterministic), and charges every call what its measurement cost the first time."""

    def __init__(self, inner: Evaluator):
        self.inner = inner
        self.cache: dict[tuple[str, str], tuple[Outcome, float]] = {}
        self.charged = 0.0  # seconds charged to the current arm
        self.measured = 0.0  # seconds really spent measuring (all arms)
        self.hits = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def evaluate(self, plan, number=None, *, promote=None, fidelity="full") -> Outcome:
        # The warm start's sensitivity probes measure at low fidelity; trials (no multi-fidelity
        # in the default search) at full fidelity.
        if promote is not None:
            raise ValueError("search_quality runs without multi-fidelity (the default search)")
        key = (fidelity, json.dumps(plan_to_dict(plan), sort_keys=True))
        if key in self.cache:
            self.hits += 1
        else:
            started = time.perf_counter()
            out = self.inner.evaluate(plan, number, fidelity=fidelity)
            self.cache[key] = (out, time.perf_counter() - started)
            self.measured += self.cache[key][1]
        out, cost = self.cache[key]
        self.charged += cost
        return replace(out, timings=dict(out.timings))


class HeldoutScorer:
    """The study's quality objective on one held-out slice (a :class:`RuntimeScorer`: the dense
    model's references on the slice computed once)."""

    def __init__(self, evaluator: Evaluator, setup: ModelSetup, name: str, source: str, windows: int, width: int,
                 work: Path):
        self.name = name
        if source == "newsgroups":
            from presso.data import newsgroups

            texts = newsgroups("train")[0] + newsgroups("test")[0]
            path = work / "newsgroups.txt"
            path.write_text("\n\n".join(" ".join(t.split()) for t in texts), encoding="utf-8")
            source = str(path)
        # Nearly every document of the slice is evaluation text (the rest would be calibration,
        # which nothing here uses).
        config = EvalConfig(text=source, eval_fraction=0.95, sequences=windows, seq_len=width)
        self.scorer = RuntimeScorer(evaluator.loaded, [setup.quality], config)
        self.quality = setup.quality
        self.dense_bytes = evaluator.target.dense_bytes(evaluator.loaded.model)
        self.tokens = windows * width

    def score_gguf(self, path: Path, threads: int) -> float:
        runtime, size = self.scorer.load(get_target("gguf"), path, n_threads=threads)
        return self.score(runtime, size)

    def score(self, model, size_bytes: int) -> float:
        return self.scorer.score(model, size_bytes, self.dense_bytes)[self.quality]


@dataclass
class Scored:
    """A plan or a stock file: its bytes and held-out quality per slice."""

    name: str
    bytes: int
    fraction: float
    heldout: dict[str, float]
    search: float | None = None  # the search's own value (search text), for fronts


class Rescorer:
    """Scores plans on every held-out slice in the target's runtime, remembering plans it scored:
    ``gguf`` plans are written as a .gguf and loaded by llama.cpp; ``compressed-tensors`` plans
    are scored in torch with the compressed weights, which are the weights transformers loads from
    the folder, to the bit (tests/targets), and sized by the target's exact byte count."""

    def __init__(self, evaluator: Evaluator, scorers: list[HeldoutScorer], work: Path, threads: int):
        self.evaluator, self.scorers, self.work, self.threads = evaluator, scorers, work, threads
        self.target = evaluator.target
        self.dense_bytes = self.target.dense_bytes(evaluator.loaded.model)
        self.cache: dict[str, Scored] = {}
        self.seconds = 0.0

    def score_file(self, name: str, path: Path) -> Scored:
        values = {s.name: s.score_gguf(path, self.threads) for s in self.scorers}
        size = path.stat().st_size
        return Scored(name, size, size / self.dense_bytes, values)

    def score_plan(self, name: str, plan: Plan, expected_bytes: int | None = None) -> Scored:
        key = json.dumps(plan_to_dict(plan), sort_keys=True)
        if key not in self.cache:
            started = time.perf_counter()
            model, result = self.evaluator.assets.compress(plan)
            if self.target.name == "gguf":
                out = self.work / "plan.gguf"
                size = self.target.write(model, result, self.evaluator.loaded.tokenizer, out, force=True).on_disk_bytes
                del model
                scored = self.score_file(name, out)
                out.unlink()
            else:
                size = self.target.predict_bytes(model, result)
                scored = Scored(name, size, size / self.dense_bytes, {s.name: s.score(model, size) for s in self.scorers})
                del model
            if expected_bytes is not None and size != expected_bytes:
                raise AssertionError(f"{name}: the target's file has {size} bytes, the trial recorded {expected_bytes}")
            self.cache[key] = scored
            self.seconds += time.perf_counter() - started
        return replace(self.cache[key], name=name)


@dataclass
class ArmRun:
    arm: str
    seed: int
    trials: int
    complete: int = 0
    charged_s: float = 0.0
    front: list[Scored] = field(default_factory=list)  # the search front, re-scored on held-out text


ARMS = {  # name: (label, StudyConfig changes, trials multiplier)
    "presso": ("Presso default (evo sampler + warm start)", {}, 1),
    "nsga2": ("NSGA-II (no warm start)", {"sampler": "nsga2", "warm_start": False}, 1),
    "random3": ("random search, 3x the trials", {"sampler": "random", "warm_start": False}, 3),
}


def run_search(evaluator: CachingEvaluator, rescorer: Rescorer, base: StudyConfig, arm: str, seed: int,
               max_bytes: int) -> ArmRun:
    label, changes, times = ARMS[arm]
    config = replace(base, name=f"{arm}-{seed}", seed=seed, trials=times * base.trials, **changes)
    evaluator.charged = 0.0
    started = time.perf_counter()
    run_study(config, progress=False, evaluator=evaluator)
    study = load_existing_study(config.name, config.storage)
    rows = trial_rows(study)
    run = ArmRun(arm, seed, config.trials, complete=sum(r.state == "COMPLETE" for r in rows),
                 charged_s=evaluator.charged)
    warm = study.user_attrs.get("warm_start", {})
    if warm.get("seconds"):  # warm-start work outside evaluate() (weight-error proxies) is charged too
        run.charged_s += sum(warm["seconds"].values())
    search_s = time.perf_counter() - started
    rescore_before = rescorer.seconds
    for row in pareto_rows(study):
        if row.metrics["size_bytes"] > max_bytes:
            continue  # above the hypervolume's reference and every stock recipe: counts nowhere
        scored = rescorer.score_plan(str(row.number), plan_from_dict(row.plan), int(row.metrics["size_bytes"]))
        scored.search = row.values[base.objectives[0]]
        run.front.append(scored)
    print(f"  {arm} seed {seed}: {len(rows)} trials ({run.complete} complete), charged {run.charged_s:.0f} s, "
          f"wall {search_s:.0f} s; front {len(run.front)} plans re-scored in {rescorer.seconds - rescore_before:.0f} s",
          flush=True)
    return run


def stock_recipes(evaluator: Evaluator, rescorer: Rescorer, work: Path, threads: int,
                  types: list[str]) -> tuple[Scored, list[Scored], list[str]]:
    """The dense F32 file and llama.cpp's stock recipes, without and with an importance matrix."""
    import llama_cpp

    target = get_target("gguf")
    dense_model, tok = evaluator.loaded.model, evaluator.loaded.tokenizer
    f32 = work / "f32.gguf"
    _, dense_result = evaluator.assets.compress(Plan())
    target.write(dense_model, dense_result, tok, f32, force=True)
    dense = rescorer.score_file("F32 (dense)", f32)
    recipes, notes = [], []
    for ftype in types:
        if not hasattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}"):
            notes.append(f"{ftype}: not in this llama.cpp")
            continue
        stock = work / f"stock-{ftype}.gguf"
        llama_quantize(f32, stock, ftype, threads)
        recipes.append(rescorer.score_file(f"llama.cpp {ftype}", stock))
        try:
            plan = stock_plan(stock, dense_model)
            recipes.append(rescorer.score_plan(f"{ftype} + imatrix", plan))
        except PressoError as exc:  # a ggml type Presso does not write (IQ4_XS)
            notes.append(f"{ftype} + imatrix: not made ({str(exc).split('; allowed')[0]})")
        stock.unlink()
        print(f"  stock {ftype}: {recipes[-1].bytes:,} bytes", flush=True)
    f32.unlink()
    return dense, recipes, notes


def uniform_recipes(evaluator: Evaluator, rescorer: Rescorer) -> tuple[Scored, list[Scored], list[str]]:
    """compressed-tensors' stock recipes: llm-compressor's W8A16 (per channel) and W4A16 (groups of
    128, or 64 where 128 does not divide the rows), symmetric, on every Linear (the embedding
    table stays as it is, as in llm-compressor's recipes), with RTN and with GPTQ."""
    from presso.plan import LayerConfig, QuantConfig

    dense = rescorer.score_plan("dense", Plan())
    names = [n for n in evaluator.module_names if n not in evaluator.embedding_names]
    widths = {evaluator.loaded.model.get_submodule(n).in_features for n in names}
    group = 128 if all(w % 128 == 0 for w in widths) else 64
    recipes = []
    for label, bits, size in (("W8A16", 8, 0), (f"W4A16 g{group}", 4, group)):
        for method in ("rtn", "gptq"):
            quant = QuantConfig(bits=bits, group_size=size, symmetric=True, method=method)
            plan = Plan(layers={n: LayerConfig(quant=quant) for n in names})
            recipes.append(rescorer.score_plan(f"uniform {label} {method}", plan))
            print(f"  stock {recipes[-1].name}: {recipes[-1].bytes:,} bytes", flush=True)
    return dense, recipes, []


def run_model(setup: ModelSetup, target: str, trials: int, seeds: list[int], arms: list[str], tmp: Path,
              threads: int, keep: str | None = None, stock_types: list[str] = STOCK) -> dict:
    base = StudyConfig(name="base", model=setup.ref, target=target, space=setup.spaces[target],
                       objectives=(setup.quality, "size_fraction"), trials=trials, device="cpu",
                       storage=f"sqlite:///{tmp}/{setup.key}-{target}.db", tracking_uri=None)
    started = time.perf_counter()
    inner = Evaluator(base)
    evaluator = CachingEvaluator(inner)
    scorers = [HeldoutScorer(inner, setup, *spec, work=tmp) for spec in setup.heldout]
    rescorer = Rescorer(inner, scorers, tmp, threads)
    print(f"# {setup.ref} in {base.space}: setup {time.perf_counter() - started:.0f} s, {len(inner.bound.units)} units; "
          f"search text {tuple(inner.context.input_ids.shape)}; held-out "
          + ", ".join(f"{s.name} {s.tokens} tokens" for s in scorers), flush=True)
    if target == "gguf":
        dense, stock, notes = stock_recipes(inner, rescorer, tmp, threads, stock_types)
    else:
        dense, stock, notes = uniform_recipes(inner, rescorer)
    result = {"setup": setup, "target": target, "dense": dense, "stock": stock, "notes": notes, "runs": [],
              "trials": trials, "seeds": [], "arms": arms, "slices": [s.name for s in scorers],
              "search_text": f"{inner.context.input_ids.shape[0]} x {inner.context.input_ids.shape[1]} tokens"}
    for seed in seeds:
        largest = max(s.bytes for s in stock)
        result["runs"] += [run_search(evaluator, rescorer, base, arm, seed, largest) for arm in arms]
        result["seeds"].append(seed)
        result.update(measured_s=evaluator.measured, hits=evaluator.hits, rescore_s=rescorer.seconds)
        if keep:  # the measurements so far (whole seeds), to print the report without re-running
            Path(f"{keep}-{setup.key}-{target}.pkl").write_bytes(pickle.dumps(result))
    return result


def best_gap(setup: ModelSetup, front: list[Scored], slice_name: str, max_bytes: int) -> float | None:
    fits = [gap_of(setup, s.heldout[slice_name]) for s in front if s.bytes <= max_bytes]
    return min(fits) if fits else None


def best_stock_gap(setup: ModelSetup, stock: list, slice_name: str, min_bytes: int, cap: int | None) -> float:
    """The lowest gap of the stock files of at least ``min_bytes`` (issue 14 compares a plan with
    the best stock recipe of equal or larger size); with ``cap`` (SmolLM2's Q4_1, which reproduces
    its weights) a size below the cap is compared with the stock files below the cap only."""
    files = [s for s in stock if s.bytes >= min_bytes and (cap is None or min_bytes >= cap or s.bytes < cap)]
    return min(gap_of(setup, s.heldout[slice_name]) for s in files)


def spread(values: list[float | None], digits: int = 4) -> str:
    """``median [min, max]`` over seeds; '-' for a seed whose front has no plan that small."""
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    text = f"{statistics.median(known):.{digits}f}"
    if len(known) > 1:
        text += f" [{min(known):.{digits}f}, {max(known):.{digits}f}]"
    return text + ("" if len(known) == len(values) else f" ({len(values) - len(known)} seed(s): none)")


def report(result: dict) -> str:
    setup: ModelSetup = result["setup"]
    stock, runs, slices = result["stock"], result["runs"], result["slices"]
    main_slice = slices[0]
    directions = [setup.direction, "minimize"]
    gguf = result["target"] == "gguf"
    safe = next(s for s in stock if s.name == ("llama.cpp Q8_0" if gguf else "uniform W8A16 rtn"))
    reference = (setup.quality_floor, safe.fraction)
    cap = None
    if setup.credit_below and gguf:  # the Q4_1 trap is a ggml block format's
        # every file of that type, with or without an importance matrix (their metadata differ by bytes)
        cap = min(s.bytes for s in stock if s.name in (f"llama.cpp {setup.credit_below}", f"{setup.credit_below} + imatrix"))
    gap_label = "ppl_ratio - 1" if setup.direction == "minimize" else "1 - cosine"
    runtime = "llama.cpp" if gguf else "torch with the weights transformers loads"
    lines = [f"### {setup.ref}, target {result['target']} ({setup.spaces[result['target']]}); quality {setup.quality}", "",
             f"Search text: {result['search_text']} of `builtin:lee`'s evaluation documents. Held-out slices, scored "
             f"in {runtime}: " + ", ".join(slices) + f". Gap = {gap_label} on the held-out slice. N = "
             f"{result['trials']} trials, seeds {result['seeds']}.", ""]

    def hv(points):
        return hypervolume(points, reference, directions)

    best_note = ("best stock >= this size: the lowest gap of the stock files at least this large" +
                 (f" and below {setup.credit_below}'s size, which reproduces the weights" if cap else "") +
                 "; issue 14's target is Presso's gap at most half of it")

    # hypervolume per arm
    lines += [f"Hypervolume of each front re-scored on {main_slice} (reference: {setup.quality} = "
              f"{reference[0]}, size = {safe.name}, {reference[1]:.4f} of dense), median [min, max] over seeds; "
              "the search-text column is the same fronts as the search saw them.", "",
              "| contender | trials | held-out HV | search-text HV | charged time per seed |", "|---|---:|---:|---:|---:|"]
    stock_points = [(s.heldout[main_slice], s.fraction) for s in stock]
    hv_by = {}
    for arm in result["arms"]:
        arm_runs = [r for r in runs if r.arm == arm]
        held = [hv([(s.heldout[main_slice], s.fraction) for s in r.front]) for r in arm_runs]
        search = [hv([(s.search, s.fraction) for s in r.front]) for r in arm_runs]
        hv_by[arm] = dict(zip((r.seed for r in arm_runs), held))
        lines.append(f"| {ARMS[arm][0]} | {arm_runs[0].trials} | {spread(held, 5)} | {spread(search, 5)} | "
                     f"{spread([r.charged_s for r in arm_runs], 0)} s |")
    lines.append(f"| stock recipes (all {len(stock)} together) | - | {hv(stock_points):.5f} | - | - |")
    lines.append("")
    for arm in result["arms"]:
        if arm != "presso" and len(result["seeds"]) > 1:
            mine, theirs = list(hv_by["presso"].values()), list(hv_by[arm].values())
            inside = min(mine) <= max(theirs) and min(theirs) <= max(mine)
            lines.append(f"- Presso vs {arm}: held-out HV median {statistics.median(mine):.5f} vs "
                         f"{statistics.median(theirs):.5f}; the ranges {'overlap: the difference is inside the seed spread' if inside else 'do not overlap'}.")
    lines.append("")

    # gap at every stock size
    for slice_name in slices:
        head = ("| stock recipe | file bytes | of dense | gap | best stock >= this size | "
                + " | ".join(f"{a}: best gap <= this size" for a in result["arms"]))
        lines += [f"Gap to dense on {slice_name} at each stock recipe's size (searches: median [min, max] over seeds; "
                  f"{best_note}):", "",
                  head + " | Presso / stock | Presso / best stock >= |",
                  "|---|---:|---:|---:|---:|" + "---:|" * len(result["arms"]) + "---:|---:|"]
        for s in sorted(stock, key=lambda s: -s.bytes):
            g = gap_of(setup, s.heldout[slice_name])
            best = best_stock_gap(setup, stock, slice_name, s.bytes, cap)
            cells = []
            for arm in result["arms"]:
                cells.append(spread([best_gap(setup, r.front, slice_name, s.bytes) for r in runs if r.arm == arm]))
            presso = [best_gap(setup, r.front, slice_name, s.bytes) for r in runs if r.arm == "presso"]
            known = [p for p in presso if p is not None]
            ratio = f"{statistics.median(known) / g:.2f}x" if known and g > 0 else "-"
            ratio_best = f"{statistics.median(known) / best:.2f}x" if known and best > 0 else "-"
            lines.append(f"| {s.name} | {s.bytes:,} | {s.fraction:.4f} | {g:.4f} | {best:.4f} | " + " | ".join(cells)
                         + f" | {ratio} | {ratio_best} |")
        lines.append("")

    # targets: the reading (the best stock recipe of equal or larger size) and the plain
    # per-recipe one (each recipe against the plans no larger than it)
    credited = [s for s in sorted(stock, key=lambda s: -s.bytes) if cap is None or s.bytes < cap]
    where = (f"below {setup.credit_below}'s size ({cap:,} bytes; {setup.credit_below} reproduces SmolLM2's weights)"
             if cap else "at every stock size")
    lines += [f"Targets on {main_slice}, {where} ({len(credited)} stock files):", ""]
    for label, bar in (("half the best stock gap at equal or larger size (issue 14)",
                        lambda s: best_stock_gap(setup, stock, main_slice, s.bytes, cap)),
                       ("half the recipe's own gap", lambda s: gap_of(setup, s.heldout[main_slice]))):
        missed = []
        for s in credited:
            presso = [best_gap(setup, r.front, main_slice, s.bytes) for r in runs if r.arm == "presso"]
            met = sum(p is not None and p <= 0.5 * bar(s) for p in presso)
            if met < len(presso):
                missed.append(f"{s.name} (needs <= {0.5 * bar(s):.5f}; Presso {spread(presso)}, {met} of {len(presso)} seeds)")
        n_missed = len(missed)
        if n_missed > 6:  # the table above has every size
            missed = missed[:3] + [f"{n_missed - 6} more"] + missed[-3:]
        verdict = "met" if not missed else "NOT met"
        lines.append(f"- gap at most {label} on every seed: **{verdict}**, at {len(credited) - n_missed} of "
                     f"{len(credited)} stock sizes" + ("; missed at " + ", ".join(missed) if missed else ""))
    if "random3" in result["arms"]:
        pairs = [(hv_by["presso"][seed], hv_by["random3"][seed]) for seed in result["seeds"]]
        above = sum(p > r for p, r in pairs)
        lines.append(f"- held-out hypervolume above random search with 3x the trials on every seed: "
                     f"**{'met' if above == len(pairs) else 'NOT met'}** ({above} of {len(pairs)} seeds: "
                     + ", ".join(f"{p:.5f} vs {r:.5f}" for p, r in pairs) + ")")

    # the plans
    lines += ["", f"Presso's re-scored fronts (seed {result['seeds'][0]}): trial, of F32, held-out {setup.quality} per slice, "
              f"search-text {setup.quality}:", ""]
    first = next(r for r in runs if r.arm == "presso" and r.seed == result["seeds"][0])
    for s in sorted(first.front, key=lambda s: s.bytes):
        lines.append(f"- trial {s.name}: {s.fraction:.4f}, " + ", ".join(f"{k} {v:.4f}" for k, v in s.heldout.items())
                     + f"; search {s.search:.4f}")
    dense = result["dense"]
    lines += ["", f"Dense {'F32 file in llama.cpp' if gguf else 'model'}: {dense.bytes:,} bytes, " +
              ", ".join(f"{k} {v:.4f}" for k, v in dense.heldout.items()) + f" (vs the dense torch model). "
              f"Measuring trials took {result['measured_s']:.0f} s ({result['hits']} measurements reused across arms); "
              f"writing and re-scoring files {result['rescore_s']:.0f} s."]
    if result["notes"]:
        lines += ["", "Notes: " + "; ".join(result["notes"])]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["smollm2", "minilm"])
    parser.add_argument("--trials", type=int, default=200, help="N: trials of Presso and NSGA-II (random: 3N)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--stock", nargs="+", choices=STOCK, default=STOCK,
                        help="llama.cpp's stock types to make (default: all; Q8_0 is the hypervolume's size reference)")
    parser.add_argument("--targets", nargs="+", choices=["gguf", "compressed-tensors"], default=["gguf", "compressed-tensors"])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads")
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")), help="results file")
    parser.add_argument("--section", default="## Search vs stock recipes on held-out text (`benchmarks/search_quality.py`, issue 14)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--keep", help="save the measurements after each seed to KEEP-<model>-<target>.pkl")
    parser.add_argument("--report", nargs="+", metavar="PKL", help="print (and write) the report of saved measurements")
    args = parser.parse_args(argv)
    if "presso" not in args.arms:
        parser.error("--arms: presso is the arm the targets are about")
    import torch

    torch.set_num_threads(args.threads)
    command = "python benchmarks/search_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.perf_counter()
    if args.report:
        results = [pickle.loads(Path(p).read_bytes()) for p in args.report]
        for r in results:  # the model's settings as this file defines them
            r["setup"] = MODELS[r["setup"].key]
            r.setdefault("target", "gguf")
        text = "\n\n".join(report(r) for r in results) + "\n"
        print(text)
        if not args.no_write:
            write_section(Path(args.out), args.section, f"{args.section}\n\n{text}")
        return 0
    sections = []
    with tempfile.TemporaryDirectory(prefix="presso-sq-", ignore_cleanup_errors=True) as tmp:
        for key in args.models:
            for target in args.targets:
                result = run_model(MODELS[key], target, args.trials, args.seeds, args.arms, Path(tmp), args.threads,
                                   args.keep, args.stock)
                text = report(result)
                print(text, flush=True)
                sections.append(text)
    total = time.perf_counter() - started
    header = [args.section, "",
              f"- command: `{command.strip()}`",
              f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; total wall time {total / 60:.0f} min",
              f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), torch {torch.__version__} "
              f"({args.threads} thread(s)), {platform.python_implementation()} {platform.python_version()}", ""]
    text = "\n".join(header + sections) + "\n"
    print(f"\ntotal {total / 60:.1f} min")
    if not args.no_write:
        write_section(Path(args.out), args.section, text)
        print(f"wrote {args.out}")
    return 0


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section under ``heading`` in ``path`` (up to the next ``## ``), or append it."""
    old = path.read_text() if path.exists() else ""
    start = old.find(heading + "\n")
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    end = old.find("\n## ", start + len(heading))
    path.write_text(old[:start] + text + (old[end + 1:] if end >= 0 else ""))


if __name__ == "__main__":
    sys.exit(main())
