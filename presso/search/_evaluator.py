"""Per-worker evaluation: everything that can be computed once per process is computed once.

An :class:`Evaluator` loads the model, the text, the dense model's reference outputs and the
calibration statistics once; :meth:`Evaluator.evaluate` then compresses an in-memory copy of
the pristine model with one plan and scores it. ``apply_plan`` and ``evaluate_saved`` reuse
the same pieces, so an exported plan reproduces its trial's values exactly.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from presso.errors import PressoError
from presso.search._config import EvalConfig, StudyConfig
from presso.targets import kernel_counts


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    direction: str
    unit: str


@dataclass
class Outcome:
    """One trial's result: objective values, extra metrics and timings (seconds).

    With multi-fidelity, ``low_values`` holds the values measured on the short text first and
    ``fidelity`` says which text ``values`` come from: ``"full"``, or ``"low"`` when the plan
    was not promoted (then ``values`` equals ``low_values``).

    ``files`` are text files for the trial's MLflow run (the classification report of a task
    model, the per-module kernel table ``kernels.json``), never stored in the study: they go to
    observers through ``on_files``. ``kernels`` counts the modules per runtime kernel (stored on
    the trial: it depends on the worker's CPU or GPU, not only on the plan).
    """

    values: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    fidelity: str = "full"
    low_values: dict[str, float] | None = None
    files: dict[str, str] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)


def default_objectives(task: str) -> tuple[str, ...]:
    if task in ("sequence-classification", "token-classification"):
        return ("accuracy", "f1_macro", "size_fraction")
    return ("ppl_ratio", "size_fraction") if task == "causal-lm" else ("embedding_cosine", "size_fraction")


class TextData:
    """Calibration and evaluation tokens, cut from disjoint documents."""

    def __init__(self, tokenizer, eval_config: EvalConfig):
        from presso.data import load_documents, split_documents, token_batches

        self.tokenizer = tokenizer
        documents = load_documents(eval_config.text)
        self.calibration_docs, eval_docs = split_documents(documents, eval_config.eval_fraction)
        self.eval_ids = token_batches(tokenizer, eval_docs, eval_config.sequences, eval_config.seq_len)
        self._calibration: dict[tuple[int, int], object] = {}

    def calibration_ids(self, samples: int, seq_len: int):
        from presso.data import token_batches
        from presso.objectives import assert_disjoint

        key = (samples, seq_len)
        if key not in self._calibration:
            ids = token_batches(self.tokenizer, self.calibration_docs, samples, seq_len)
            if seq_len == self.eval_ids.shape[1]:
                assert_disjoint(ids, self.eval_ids)
            self._calibration[key] = ids
        return self._calibration[key]


class CompressionAssets:
    """Calibration statistics and teacher outputs of the dense model, built on first need and
    shared by every later trial with the same calibration settings."""

    def __init__(self, dense, text: TextData, *, cache_ranks: bool = False):
        self.dense, self.text = dense, text
        self.cache_ranks = cache_ranks
        self._stats: dict[tuple[int, int], object] = {}
        self._teachers: dict[tuple[int, int], object] = {}
        self._work = None  # (model, {fqn: (dense weight, work weight)}), see _reusable_copy
        self._dirty: set[str] = set()
        self._format_cache = None  # ggml-format layers, built on the first plan that uses one
        self.layer_cache = None  # per-worker quantized layers (methods other than rtn), made on first need

    def calibration(self, samples: int, seq_len: int, hessians: bool = False):
        """The dense model's calibration statistics for these settings (computed once; once more,
        with input Hessians in the same pass, the first time a plan's quantizer needs them)."""
        from presso.compress import collect_calibration

        key = (samples, seq_len)
        if key not in self._stats or (hessians and self._stats[key].hessians is None):
            stats = collect_calibration(self.dense, self.text.calibration_ids(*key), hessians=hessians)
            stats.cache_ranks = self.cache_ranks
            self._stats[key] = stats
        return self._stats[key]

    def quantized_layers(self):
        """The worker's :class:`~presso.compress.quantizers.LayerCache` (made on first need)."""
        from presso.compress.quantizers import LayerCache

        if self.layer_cache is None:  # not `or`: an empty cache is falsy (it has a length)
            self.layer_cache = LayerCache()
        return self.layer_cache

    def kwargs_for(self, plan) -> dict:
        from presso.compress import TeacherCache

        key = (plan.calibration_samples, plan.calibration_seq_len)
        kwargs = {}
        if plan.needs_calibration:
            kwargs["calibration"] = self.calibration(*key, hessians=plan.needs_hessians)
        if any(c.quant.active and c.quant.method != "rtn" for c in plan.layers.values()):
            kwargs["cache"] = self.quantized_layers()
        if any(c.quant.format is not None for c in plan.layers.values()):
            from presso.compress import FormatCache

            if self._format_cache is None:
                self._format_cache = FormatCache()
            kwargs["format_cache"] = self._format_cache
        if plan.needs_recovery:
            if key not in self._teachers:
                self._teachers[key] = TeacherCache.build(self.dense, self.text.calibration_ids(*key))
            kwargs["teacher"] = self._teachers[key]
        return kwargs

    def compress(self, plan, *, reuse: bool = False):
        """A compressed copy of the dense model, and the compression result.

        Args:
            plan: the plan to apply.
            reuse: hand back the worker's one reusable copy (see :meth:`_reusable_copy`)
                instead of a fresh deep copy; the model is then only valid until the next
                call. Plans with adapters always get a fresh copy.
        """
        import torch

        from presso.compress import compress_

        started = time.perf_counter()
        if reuse and not any(c.adapter.active for c in plan.layers.values()):
            model = self._reusable_copy()
        else:
            model = copy.deepcopy(self.dense)
        copy_s = time.perf_counter() - started
        kwargs = self.kwargs_for(plan)
        torch.manual_seed(plan.seed)
        reusing = self._work is not None and model is self._work[0]
        try:
            result = compress_(model, plan, **kwargs)
        except BaseException:
            if reusing:
                self._dirty = set(self._work[1])  # a half-applied plan: restore every weight next time
            raise
        if reusing:
            self._dirty = set(result.modules)
        result.timings["copy_s"] = copy_s
        return model, result

    def _reusable_copy(self):
        """One working copy per worker, restored to the dense weights before each trial.

        NOTE: ``compress_`` only rewrites the weights of :func:`target_modules` (adapters excluded),
        so the copy shares every other tensor (norms, biases, position tables) with the dense model
        and only the weights the previous plan touched are copied back. This replaces a deep
        copy of the whole model per trial (and the page faults of its fresh memory).
        """
        import torch

        from presso.compress import mark_dense, target_modules

        if self._work is None:
            dense_modules = target_modules(self.dense)
            own = {id(m.weight) for m in dense_modules.values()}
            shared = {id(t): t for t in [*self.dense.parameters(), *self.dense.buffers()] if id(t) not in own}
            work = copy.deepcopy(self.dense, shared)
            pairs = {name: (dense_modules[name].weight, module.weight)
                     for name, module in target_modules(work).items()}
            self._work, self._dirty = (work, pairs), set()
            return work
        work, pairs = self._work
        with torch.no_grad():
            for name in self._dirty:
                source, target = pairs[name]
                target.copy_(source)
        self._dirty = set()
        mark_dense(work)
        return work


def _objectives_for(names, task: str):
    from presso.objectives import get_objective

    objectives = []
    for name in names:
        objective = get_objective(name)
        tasks = [getattr(t, "value", t) for t in getattr(objective, "tasks", ())]
        if tasks and task not in tasks:
            # NOTE: `accuracy` named the nearest-centroid embedding probe before it meant a task head's accuracy.
            renamed = "; the embedding probe once called 'accuracy' is now 'probe_accuracy'" if name == "accuracy" else ""
            raise PressoError(
                f"objectives: {name!r} does not apply to a {task} model; it applies to: {', '.join(tasks)}{renamed}"
            )
        objectives.append(objective)
    return objectives


def _position_limit(model) -> int | None:
    """Positions of a model with a learned position table (BERT: 512), else None (rotary models)."""
    table = getattr(getattr(getattr(model, "base_model", model), "embeddings", None), "position_embeddings", None)
    return getattr(table, "num_embeddings", None)


def _eval_context(loaded, text: TextData, device: str, eval_config: EvalConfig, rows: int | None = None,
                  config: StudyConfig | None = None):
    from presso.objectives import EvalContext, load_labelled

    path = eval_config.labels_file
    if path and config is not None:
        path = config.resolve_path(path)
    labelled = load_labelled(path) if path else None
    ids = text.eval_ids if rows is None else text.eval_ids[:rows]
    positions = _position_limit(loaded.model)
    if positions is not None and ids.shape[1] > positions:
        raise PressoError(f"eval.seq_len: got {ids.shape[1]}; allowed: at most {positions} "
                          "(the model's position embeddings)")
    return EvalContext(task=loaded.task, device=device, input_ids=ids, tokenizer=loaded.tokenizer,
                       dense_model=loaded.model, labelled=labelled)


class Evaluator:
    """Scores plans for one study in one worker process.

    Args:
        config: the study settings (model, space, objectives, constraints, text, device).
        loaded: an already loaded model to reuse (tests, benchmarks); loaded from
            ``config.model`` when None.
    """

    def __init__(self, config: StudyConfig, loaded=None):
        from presso.compress import compressible_modules, embedding_modules
        from presso.models import load_model, resolve_device
        from presso.objectives import check_constraints, parse_constraint, prepare_all
        from presso.spaces import load_space
        from presso.targets import get_target

        started = time.perf_counter()
        self.config = config
        self.device = resolve_device(config.device)
        self.loaded = loaded or load_model(config.model, device=self.device, trust_remote_code=config.trust_remote_code)
        self.loaded.model.to(self.device)
        space_source = config.space if isinstance(config.space, dict) else config.resolve_path(str(config.space))
        self.space = load_space(space_source)
        self.space_dict = self.space.to_dict()
        self.module_names = list(compressible_modules(self.loaded.model))
        self.embedding_names = list(embedding_modules(self.loaded.model))
        self.bound = self.space.bind(self.module_names, exact_names=self.embedding_names)
        self.weight_shapes = weight_shapes(self.loaded.model)
        self.target = get_target(config.target)
        self.size_terms = size_terms_for(self.target, self.loaded.model)
        check_space_for_target(self.bound, self.loaded.model, self.target)
        self.objectives = _objectives_for(config.objectives, self.loaded.task)
        self.objective_specs = [
            ObjectiveSpec(o.name, getattr(o.direction, "value", o.direction), o.unit) for o in self.objectives
        ]
        known = [*config.objectives, *METRIC_NAMES]
        self.constraints = [parse_constraint(text, known=known) for text in config.constraints]
        check_constraints(self.constraints, known)
        self.text = TextData(self.loaded.tokenizer, config.eval)
        self.assets = CompressionAssets(self.loaded.model, self.text, cache_ranks=True)
        self.context = _eval_context(self.loaded, self.text, self.device, config.eval, config=config)
        prepare_all(self.objectives, self.context)
        self._low_context = None
        self.setup_s = time.perf_counter() - started

    @property
    def low_context(self):
        """The evaluation context on the first ``fidelity.fraction`` of the evaluation
        sequences (at least one), with its own dense references; built on first use."""
        if self._low_context is None:
            from presso.objectives import prepare_all

            ids = self.context.input_ids
            count = max(1, min(ids.shape[0], round(ids.shape[0] * self.config.fidelity.fraction)))
            self._low_context = _eval_context(self.loaded, self.text, self.device, self.config.eval, rows=count,
                                              config=self.config)
            prepare_all(self.objectives, self._low_context)
        return self._low_context

    def evaluate(self, plan, number: int | None = None, *, promote=None, fidelity: str = "full") -> Outcome:
        """Compress a pristine copy with ``plan`` and measure every objective.

        Args:
            plan: the plan.
            number: the trial number (messages only).
            promote: multi-fidelity: when given, the objectives are first measured on the short
                text (:attr:`low_context`) and ``promote(low_values)`` decides whether the
                same compressed model is then measured on the full text.
            fidelity: ``"low"`` measures on the short text only (sensitivity probes).

        Raises:
            PressoError: the plan does not fit the model, or an objective is not finite.
        """
        from presso.objectives import COMPRESSION_KEY, TrialContext, measure_all, trial_report_files

        if fidelity not in ("full", "low"):
            raise PressoError(f"evaluate.fidelity: got {fidelity!r}; allowed: 'full', 'low'")
        self.target.check_plan(self.assets.dense, plan)
        model, result = self.assets.compress(plan, reuse=True)
        size = target_size(self.target, model, result)
        kernels = self.target.kernels(model, result)
        timings = {"copy_s": result.timings.get("copy_s", 0.0), "compress_s": result.timings.get("total_s", 0.0)}
        try:
            # NOTE: measured as the target's runtime computes (llama.cpp rounds activations to 8 bits).
            with self.target.emulate(model, result):
                low_values = None
                if promote is not None or fidelity == "low":
                    started = time.perf_counter()
                    trial = TrialContext(number=number, size_bytes=size.file_bytes, dense_bytes=size.dense_bytes)
                    trial.cache[COMPRESSION_KEY] = result
                    low = measure_all(self.objectives, model, self.low_context, trial)
                    low_values = {k: float(v) for k, v in low.items()}
                    timings["low_evaluate_s"] = time.perf_counter() - started
                    if fidelity == "low" or not promote(low_values):
                        timings["evaluate_s"] = timings["low_evaluate_s"]
                        return Outcome(values=low_values, metrics=size_metrics(result, size),
                                       timings=_with_parts(timings, result), fidelity="low", low_values=low_values,
                                       kernels=kernel_counts(kernels))
                started = time.perf_counter()
                trial = TrialContext(number=number, size_bytes=size.file_bytes, dense_bytes=size.dense_bytes)
                trial.cache[COMPRESSION_KEY] = result
                values = measure_all(self.objectives, model, self.context, trial)
                files = trial_report_files(self.context, trial)
                files["kernels.json"] = json.dumps(kernels, indent=1, sort_keys=True)
                timings["evaluate_s"] = time.perf_counter() - started + timings.get("low_evaluate_s", 0.0)
        finally:
            del model
        return Outcome(values={k: float(v) for k, v in values.items()}, metrics=size_metrics(result, size),
                       timings=_with_parts(timings, result), low_values=low_values, files=files,
                       kernels=kernel_counts(kernels))

    def dense_files(self) -> dict[str, str]:
        """Text files about the uncompressed model for the invocation's MLflow run: its
        classification report (task models, from the predictions ``prepare`` made), else ``{}``."""
        from presso.objectives import dense_report_files

        return {f"uncompressed/{name}": text for name, text in dense_report_files(self.context).items()}


def _with_parts(timings: dict, result) -> dict:
    for key in ("prune_s", "quant_s", "recovery_s"):
        if key in result.timings:
            timings[key] = result.timings[key]
    return timings


def _presso_target():
    from presso.targets import get_target

    return get_target("presso")


def dtype_label(model) -> str:
    """The dense model's weight type in words (``fp32``; ``fp32/fp16`` when mixed)."""
    import torch

    short = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
    kinds = {short.get(p.dtype, str(p.dtype).removeprefix("torch.")) for p in model.parameters() if p.is_floating_point()}
    return "/".join(sorted(kinds)) or "fp32"


def weight_shapes(model) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{module: (weight shape, dtype name)}`` of every module a plan may compress: what the
    driver needs to size plans without the model (it crosses to the driver as plain data)."""
    from presso.compress import target_modules

    return {name: (tuple(m.weight.shape), str(m.weight.dtype).removeprefix("torch."))
            for name, m in target_modules(model).items()}


def size_terms_for(target, model) -> dict[str, str]:
    """What ``size_bytes`` and ``dense_bytes`` count for ``target`` and this dense model (see
    :func:`presso.targets.size_line`); stored with the study as ``size``."""
    from presso.targets import size_terms

    return size_terms(target, dtype_label(model))


METRIC_NAMES = ("size_bytes", "dense_bytes", "covered_fraction", "mean_bits", "mean_sparsity")


@dataclass(frozen=True)
class TargetSize:
    """The bytes a trial's size objectives read: the target's file, and the dense model's in it."""

    file_bytes: int
    dense_bytes: int
    covered_fraction: float


def target_size(target, model, result) -> TargetSize:
    """Sizes in ``target``'s format (Presso's own: its size report; others: the target's file)."""
    report = result.size
    if target.name == "presso":
        return TargetSize(report.file_bytes, report.dense_bytes, report.covered_fraction)
    return TargetSize(target.predict_bytes(model, result), target.dense_bytes(model), report.covered_fraction)


def check_space_for_target(bound, model, target) -> None:
    """Every format a space offers must be storable by the target for every module it reaches.

    Raises:
        PressoError: names the module, the format and what the target offers there.
    """
    offered = getattr(target, "offered_formats", None)
    for unit in bound.units:
        formats = [f for f in unit.group.format.grid() if f is not None]
        if formats and offered is None:
            raise PressoError(f"space.groups[{unit.group.name!r}].format: got {formats}; target {target.name!r} "
                              "takes bits/group_size, not ggml formats (use target: gguf)")
        for module in unit.modules if formats else ():
            in_f = model.get_submodule(module).weight.shape[1]
            allowed = offered(in_f)
            for fmt in formats:
                if fmt not in allowed:
                    raise PressoError(f"space.groups[{unit.group.name!r}].format: {fmt!r} does not fit module {module!r} "
                                      f"(rows of {in_f}); target {target.name} offers there: {allowed}")


def size_metrics(result, size=None) -> dict[str, float]:
    size = size or target_size(_presso_target(), None, result)
    layers = result.plan.layers.values()
    bits = [c.quant.bits_per_weight for c in layers] or [16]
    sparsity = [c.sparsity.amount for c in layers] or [0.0]
    return {
        "size_bytes": float(size.file_bytes),
        "dense_bytes": float(size.dense_bytes),
        "covered_fraction": float(size.covered_fraction),
        "mean_bits": sum(bits) / len(bits),
        "mean_sparsity": sum(sparsity) / len(sparsity),
    }


@dataclass
class ApplyReport:
    """What ``presso apply`` wrote: the counted file's predicted and measured bytes, the dense
    bytes (``size_fraction``'s denominator), what both count, and the other files' bytes."""

    predicted_bytes: int
    on_disk_bytes: int
    dense_bytes: int
    target: str = "presso"
    size_terms: dict[str, str] = field(default_factory=dict)
    other_files_bytes: int = 0

    @property
    def size_fraction(self) -> float:
        return self.on_disk_bytes / self.dense_bytes


def apply_plan(plan, out_dir, *, model: str | None = None, config: StudyConfig | None = None,
               force: bool = False, device: str = "cpu", target: str | None = None) -> ApplyReport:
    """Compress a model with ``plan`` exactly as a study trial did, and save it to ``out_dir``.

    The calibration text comes from ``config.eval`` (the study file) or the defaults, so an
    exported plan applied with its study's settings reproduces the trial bit for bit.
    """
    from presso.models import load_model
    from presso.targets import get_target

    target_name = target or plan.target or (config.target if config else "presso")
    writer = get_target(target_name)
    ref = model or plan.model or (config.model if config else None)
    if not ref:
        raise PressoError("apply: the plan names no model; pass --model REF (see `presso models`)")
    out = Path(out_dir)
    if out.exists() and not force:
        raise PressoError(f"apply: {str(out)!r} already exists; pass --force to replace it")
    eval_config = config.eval if config else EvalConfig()
    loaded = load_model(ref, device=device, trust_remote_code=bool(config and config.trust_remote_code))
    writer.check_plan(loaded.model, plan)
    assets = CompressionAssets(loaded.model, TextData(loaded.tokenizer, eval_config))
    compressed, result = assets.compress(plan)
    saved = writer.write(compressed, result, loaded.tokenizer, out, force=force)
    return ApplyReport(predicted_bytes=saved.predicted_bytes, on_disk_bytes=saved.on_disk_bytes,
                       dense_bytes=target_size(writer, compressed, result).dense_bytes, target=writer.name,
                       size_terms=size_terms_for(writer, loaded.model),
                       other_files_bytes=sum(saved.files.values()) - saved.on_disk_bytes)


@dataclass
class SavedEvaluation:
    """A saved model scored like a trial: ``values`` (the study's objectives), ``reports``
    (``{"compressed", "uncompressed"}`` classification reports, when asked) and ``size``
    (:func:`presso.targets.size_line`: the counted file's bytes over the dense bytes)."""

    values: dict[str, float]
    size: str
    reports: dict[str, dict] | None = None


def evaluate_saved(directory, *, config: StudyConfig | None = None, device: str = "cpu") -> dict[str, float]:
    """Score a saved compressed model with the study's objectives (or the task's defaults).

    The dense model named in the saved plan provides the reference outputs; sizes are read
    from the files on disk. Checksums are verified on load.
    """
    return score_saved(directory, config=config, device=device).values


def evaluate_saved_report(directory, *, config: StudyConfig | None = None,
                          device: str = "cpu") -> tuple[dict[str, float], dict[str, dict]]:
    """:func:`evaluate_saved` plus the classification reports of the saved model and of the
    uncompressed one, on the study's labelled set (``eval.labels``).

    Returns:
        ``(values, {"compressed": {"text", "table"}, "uncompressed": {"text", "table"}})``:
        the report as scikit-learn / seqeval print it and as a dict.

    Raises:
        PressoError: the model has no classification head or the study gives no labelled set.
    """
    scored = score_saved(directory, config=config, device=device, report=True)
    return scored.values, scored.reports


def score_saved(directory, *, config: StudyConfig | None = None, device: str = "cpu",
                report: bool = False) -> SavedEvaluation:
    """:func:`evaluate_saved` (with ``report``: :func:`evaluate_saved_report`) and the size line."""
    from presso.objectives import predict, task_report

    values, model, context, size = _evaluate_saved(directory, config=config, device=device)
    if not report:
        return SavedEvaluation(values, size)
    if context.task.value not in ("sequence-classification", "token-classification") or context.labelled is None:
        raise PressoError(
            f"evaluate --report: needs a model with a classification head and a labelled set (study eval.labels); "
            f"got a {context.task.value} model{'' if context.labelled is not None else ' and no eval.labels'}"
        )
    gold, predicted = predict(model, context)
    dense = context.references.get("task/dense", {}).get("predictions")  # kept by the task objectives' prepare
    if dense is None:
        dense = predict(context.dense_model, context)[1]
    reports = {}
    for which, labels in (("compressed", predicted), ("uncompressed", dense)):
        text, table = task_report(gold, labels, context.task)
        reports[which] = {"text": text, "table": table}
    return SavedEvaluation(values, size, reports)


def _evaluate_saved(directory, *, config: StudyConfig | None, device: str):
    from presso.compress import dense_nbytes, load_compressed
    from presso.models import load_model
    from presso.objectives import TrialContext, measure_all, prepare_all
    from presso.targets import size_line

    runtime_target = _runtime_target(Path(directory))
    if runtime_target is not None:
        return _evaluate_in_runtime(Path(directory), runtime_target, config)
    model, tokenizer, plan = load_compressed(directory, device=device)
    if not plan.model and not config:
        raise PressoError(f"evaluate: the plan in {str(directory)!r} names no model; pass --study-file")
    ref = plan.model or config.model
    dense = load_model(ref, device=device)
    names = config.objectives if config else default_objectives(dense.task)
    eval_config = config.eval if config else EvalConfig()
    objectives = _objectives_for(names, dense.task)
    text = TextData(dense.tokenizer, eval_config)
    context = _eval_context(dense, text, device, eval_config, config=config)
    prepare_all(objectives, context)
    weights = Path(directory) / "model.safetensors"
    trial = TrialContext(size_bytes=weights.stat().st_size, dense_bytes=dense_nbytes(dense.model))
    values = measure_all(objectives, model, context, trial)
    size = size_line(trial.size_bytes, trial.dense_bytes, size_terms_for(_presso_target(), dense.model))
    return {k: float(v) for k, v in values.items()}, model, context, size


def _runtime_target(path: Path) -> str | None:
    """The runtime format of ``path``: ``gguf`` for a .gguf file, ``compressed-tensors`` for a
    transformers folder with such a ``quantization_config``, else ``None`` (a Presso folder)."""
    import json

    if path.suffix == ".gguf":
        return "gguf"
    config_file = path / "config.json"
    if path.is_dir() and not (path / "presso_manifest.json").exists() and config_file.is_file():
        quant = json.loads(config_file.read_text(encoding="utf-8")).get("quantization_config") or {}
        if quant.get("quant_method") == "compressed-tensors":
            return "compressed-tensors"
    return None


class RuntimeScorer:
    """A study's objectives on one evaluation text, for models a target's runtime loaded
    (llama.cpp for GGUF, transformers for compressed-tensors) or compressed in torch. The dense
    model's references on that text are computed once, so many files can be scored.

    Args:
        dense: the loaded dense model (:func:`presso.models.load_model`).
        objectives: objective names.
        eval_config: the evaluation text (a held-out one, say).
        config: the study, to resolve a labelled set's path against its file.
    """

    def __init__(self, dense, objectives, eval_config: EvalConfig, config: StudyConfig | None = None):
        from presso.objectives import prepare_all

        self.dense = dense
        self.objectives = _objectives_for(objectives, dense.task)
        self.context = _eval_context(dense, TextData(dense.tokenizer, eval_config), "cpu", eval_config, config=config)
        prepare_all(self.objectives, self.context)

    def load(self, target, path: Path, **kwargs):
        """``path`` loaded by ``target``'s runtime, sized for this text; and its weight bytes."""
        if target.name == "gguf":
            return target.load(path, n_ctx=max(int(self.context.input_ids.shape[1]), 8), **kwargs), path.stat().st_size
        return target.load(path, **kwargs).eval(), (path / "model.safetensors").stat().st_size

    def score(self, model, size_bytes: int, dense_bytes: int) -> dict[str, float]:
        from presso.objectives import TrialContext, measure_all

        trial = TrialContext(size_bytes=size_bytes, dense_bytes=dense_bytes)
        return {k: float(v) for k, v in measure_all(self.objectives, model, self.context, trial).items()}


def _evaluate_in_runtime(path: Path, target_name: str, config: StudyConfig | None):
    """Score a target's file loaded by its runtime (llama.cpp for GGUF, transformers for
    compressed-tensors) on the study's evaluation text, with the same objectives as a trial."""
    from presso.models import load_model
    from presso.targets import get_target, size_line

    if config is None:
        raise PressoError(f"evaluate: {str(path)!r} is a {target_name} model; pass --study-file "
                          "(it names the dense model and the evaluation text)")
    target = get_target(target_name)
    dense = load_model(config.model, device="cpu")
    scorer = RuntimeScorer(dense, config.objectives, config.eval, config=config)
    runtime, size = scorer.load(target, path)
    dense_bytes = target.dense_bytes(dense.model)
    values = scorer.score(runtime, size, dense_bytes)
    line = size_line(size, dense_bytes, size_terms_for(target, dense.model))
    return values, runtime, scorer.context, line
