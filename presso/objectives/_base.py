"""The objective contract: enums, the per-worker and per-trial contexts, and ``BaseObjective``.

Nothing here imports torch at module level; ``BaseObjective.measure`` and ``prepare`` import it
only when the objective needs a model.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from presso.errors import PressoError, did_you_mean


class Task(str, Enum):
    """The kind of model an objective applies to."""

    CAUSAL_LM = "causal-lm"  # ...ForCausalLM: forward(input_ids, attention_mask) -> .logits
    ENCODER = "encoder"  # BertModel-like: forward(input_ids, attention_mask) -> .last_hidden_state
    SEQUENCE_CLASSIFICATION = "sequence-classification"  # ...ForSequenceClassification: .logits [n, labels]
    TOKEN_CLASSIFICATION = "token-classification"  # ...ForTokenClassification: .logits [n, seq, labels]


class Direction(str, Enum):
    """Whether smaller or larger values are better. The values are Optuna's direction strings."""

    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


def parse_task(value: Any, where: str = "task") -> Task:
    """``"causal-lm"`` -> ``Task.CAUSAL_LM``; anything else raises a one-line ``PressoError``."""
    try:
        return Task(value)
    except ValueError:
        allowed = [t.value for t in Task]
        raise PressoError(
            f"{where}: got {value!r}{did_you_mean(str(value), allowed)}; allowed: {', '.join(allowed)}"
        ) from None


def parse_direction(value: Any, where: str = "direction") -> Direction:
    """``"minimize"``/``"maximize"`` (or the enum) -> ``Direction``; else a ``PressoError``."""
    try:
        return Direction(value)
    except ValueError:
        raise PressoError(f"{where}: got {value!r}; allowed: minimize, maximize") from None


class NonFiniteObjective(PressoError):
    """An objective measured NaN or infinity. The driver fails that trial alone.

    Attributes:
        objective: the objective's registered name.
        value: the non-finite value.
    """

    def __init__(self, objective: str, value: float, detail: str = ""):
        self.objective = objective
        self.value = value
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"objective {objective!r} measured a non-finite value {value!r}{extra}; "
            "the compressed model is numerically broken, so this trial fails"
        )


@dataclass
class LabelledData:
    """A labelled text set: one label per text (see ``load_labelled``). The task objectives
    (``accuracy``, ``f1_macro``...) score a sequence classifier on it; ``probe_accuracy``
    fits a nearest-centroid probe on part of it.

    Args:
        texts: one string per example.
        labels: one label per example (strings; compared for equality only).
    """

    texts: list[str]
    labels: list[str]

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise PressoError(
                f"labelled data: got {len(self.texts)} texts but {len(self.labels)} labels; they must match"
            )
        if len(set(self.labels)) < 2:
            raise PressoError(
                f"labelled data: got {len(set(self.labels))} distinct label(s) in {len(self.labels)} rows; "
                "accuracy needs at least 2 classes"
            )


@dataclass
class TaggedData:
    """A token-classification set: sentences of words with one tag per word (BIO or IOBES
    tags such as ``B-PER``), read from a CoNLL-style file by ``load_conll``.

    Args:
        words: one list of words per sentence.
        tags: one list of tags per sentence, as long as its words.
    """

    words: list[list[str]]
    tags: list[list[str]]

    def __post_init__(self):
        if len(self.words) != len(self.tags):
            raise PressoError(f"tagged data: got {len(self.words)} sentences but {len(self.tags)} tag lists; they must match")
        for i, (words, tags) in enumerate(zip(self.words, self.tags)):
            if not words or len(words) != len(tags):
                raise PressoError(
                    f"tagged data: sentence {i} has {len(words)} words and {len(tags)} tags; allowed: as many tags as words, at least one"
                )


@dataclass
class EvalContext:
    """Everything one worker needs to measure objectives; built once per worker.

    The caller splits text into calibration and evaluation sets (check with
    :func:`assert_disjoint`) and tokenizes the evaluation set into ``input_ids``.
    ``prepare`` hooks read ``dense_model`` and fill ``references``; after all hooks ran the
    driver may set ``dense_model = None`` to let it go (measuring never reads it).

    Args:
        task: ``"causal-lm"`` or ``"encoder"`` (or a :class:`Task`).
        device: where models and batches live (``"cpu"``, ``"cuda:0"``, a ``torch.device``).
            The driver moves models there; objectives move batches there.
        input_ids: LongTensor ``[n, seq]`` of held-out evaluation tokens.
        attention_mask: tensor ``[n, seq]`` of 0/1; ``None`` means all ones.
        tokenizer: the model's tokenizer (needed by the objectives that tokenize labelled data).
        dense_model: the uncompressed model, read by ``prepare`` hooks only.
        labelled: the labelled set for the task objectives and ``probe_accuracy``:
            :class:`LabelledData` (texts with labels) or :class:`TaggedData` (tagged words);
            ``None`` when the user gave none.
        batch_size: rows per forward pass.
        references: the dense model's outputs, filled by ``prepare`` hooks.
        cache: per-worker scratch space for objectives (tokenized texts, fixed batches).
    """

    task: Task | str
    device: Any
    input_ids: Any
    attention_mask: Any = None
    tokenizer: Any = None
    dense_model: Any = None
    labelled: LabelledData | TaggedData | None = None
    batch_size: int = 8
    references: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        import torch

        self.task = parse_task(self.task, "EvalContext.task")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PressoError(f"EvalContext.batch_size: got {self.batch_size!r}; allowed: an integer >= 1")
        ids = self.input_ids
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long or ids.shape[0] < 1:
            got = f"{type(ids).__name__} {tuple(ids.shape)} {ids.dtype}" if isinstance(ids, torch.Tensor) else repr(ids)
            raise PressoError(
                f"EvalContext.input_ids: got {got}; allowed: a LongTensor [n, seq] with n >= 1"
            )
        if self.attention_mask is None:
            self.attention_mask = torch.ones_like(ids)
        mask = self.attention_mask
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(ids.shape):
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else repr(mask)
            raise PressoError(
                f"EvalContext.attention_mask: got shape {got}; allowed: the shape of input_ids {tuple(ids.shape)}"
            )
        if bool((mask.sum(dim=1) == 0).any()):
            raise PressoError("EvalContext.attention_mask: a row has no real token; drop empty rows")

    def batches(self):
        """Yield ``(input_ids, attention_mask)`` slices of ``batch_size`` rows on ``device``."""
        for start in range(0, self.input_ids.shape[0], self.batch_size):
            stop = start + self.batch_size
            yield (
                self.input_ids[start:stop].to(self.device),
                self.attention_mask[start:stop].to(self.device),
            )


@dataclass
class TrialContext:
    """What the driver knows about one trial besides the compressed model.

    The compression engine reports sizes; a fresh ``TrialContext`` is made for every trial,
    so objectives can share work within a trial through ``cache`` (``perplexity``,
    ``ppl_ratio`` and ``kl_divergence`` share one forward pass this way).

    Args:
        number: the trial number (used in messages only).
        size_bytes: bytes the compressed weights take, as stored (from the size report).
        dense_bytes: bytes the uncompressed weights take.
        cache: per-trial scratch space for objectives.
    """

    number: int | None = None
    size_bytes: int | None = None
    dense_bytes: int | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("size_bytes", "dense_bytes"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PressoError(f"TrialContext.{name}: got {value!r}; allowed: an integer >= 0 or None")
        if self.dense_bytes == 0:
            raise PressoError("TrialContext.dense_bytes: got 0; allowed: an integer > 0 (the dense model's size)")


class BaseObjective(abc.ABC):
    """One named number measured on a compressed model.

    Lifecycle, per worker::

        objectives = [get_objective(name) for name in names]   # build
        ctx = EvalContext(task=..., device=..., input_ids=..., dense_model=dense)
        prepare_all(objectives, ctx)          # each objective's prepare(ctx), ONCE per worker
        for each trial:
            model = compress(copy of dense, plan)
            trial_ctx = TrialContext(number=..., size_bytes=..., dense_bytes=...)
            values = measure_all(objectives, model, ctx, trial_ctx)   # measure() per objective

    Subclasses set the class attributes and implement :meth:`compute`; they may override
    :meth:`prepare` (default: nothing). Callers use :meth:`measure`, which puts the model in
    eval mode, runs :meth:`compute` under ``torch.inference_mode()`` and rejects NaN/inf.

    Attributes:
        name: registry key and the name used in constraints and pick rules.
        direction: ``Direction.MINIMIZE`` or ``Direction.MAXIMIZE``.
        unit: a short unit label for tables and plots.
        tasks: the tasks this objective applies to.
        needs_model: ``False`` for objectives read from the size report alone.
    """

    name: ClassVar[str]
    direction: ClassVar[Direction]
    unit: ClassVar[str]
    tasks: ClassVar[tuple[Task, ...]] = tuple(Task)
    needs_model: ClassVar[bool] = True

    def prepare(self, ctx: EvalContext) -> None:  # noqa: B027 - optional hook, no-op by default
        """Compute references from ``ctx.dense_model`` into ``ctx.references``. Runs once per worker.

        Must be idempotent: a second call with the same context may reuse what is there.
        """

    @abc.abstractmethod
    def compute(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        """Return the raw value for ``model``. Called by :meth:`measure`; do not call directly."""

    def measure(self, model: Any, ctx: EvalContext, trial: TrialContext) -> float:
        """Measure this objective on a compressed model.

        Args:
            model: the compressed model, already on ``ctx.device``; ignored when
                ``needs_model`` is false.
            ctx: the worker's prepared :class:`EvalContext`.
            trial: this trial's :class:`TrialContext`.

        Returns:
            The value as a Python float.

        Raises:
            NonFiniteObjective: the value is NaN or infinite.
            PressoError: the objective does not apply to ``ctx.task``, or inputs are missing.
        """
        check_task(self, ctx.task)
        if self.needs_model:
            import torch

            if getattr(model, "training", False):
                model.eval()  # NOTE: dropout would make every measurement random
            with torch.inference_mode():
                value = self.compute(model, ctx, trial)
        else:
            value = self.compute(model, ctx, trial)
        return check_finite(self.name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, direction={self.direction.value!r})"


def check_finite(name: str, value: Any) -> float:
    """Return ``float(value)``; raise :class:`NonFiniteObjective` for NaN or +-inf."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise PressoError(f"objective {name!r} returned {value!r}; allowed: a real number") from None
    if not math.isfinite(value):
        raise NonFiniteObjective(name, value)
    return value


def check_task(objective: BaseObjective, task: Task | str) -> None:
    """Raise ``PressoError`` when ``objective`` does not apply to ``task``."""
    task = parse_task(task)
    if task not in objective.tasks:
        allowed = ", ".join(t.value for t in objective.tasks)
        raise PressoError(
            f"objective {objective.name!r} does not apply to task {task.value!r}; it applies to: {allowed}"
        )


def prepare_all(objectives: list[BaseObjective], ctx: EvalContext) -> None:
    """Check every objective applies to ``ctx.task``, then run each ``prepare`` hook once.

    Call once per worker, before the first trial.
    """
    for objective in objectives:
        check_task(objective, ctx.task)
    for objective in objectives:
        if objective.needs_model:
            dense = ctx.dense_model
            if getattr(dense, "training", False):
                dense.eval()
            import torch

            with torch.inference_mode():
                objective.prepare(ctx)
        else:
            objective.prepare(ctx)


def measure_all(
    objectives: list[BaseObjective], model: Any, ctx: EvalContext, trial: TrialContext
) -> dict[str, float]:
    """Measure every objective on one compressed model, in order.

    Returns:
        ``{objective.name: value}``; the first non-finite value raises ``NonFiniteObjective``.
    """
    return {objective.name: objective.measure(model, ctx, trial) for objective in objectives}


def require_dense(objective: str, ctx: EvalContext) -> Any:
    """Return ``ctx.dense_model`` or raise a ``PressoError`` saying the hook needs it."""
    if ctx.dense_model is None:
        raise PressoError(
            f"objective {objective!r}: EvalContext.dense_model is None; set it before prepare_all()"
        )
    return ctx.dense_model


def require_reference(objective: str, ctx: EvalContext, key: str) -> Any:
    """Return ``ctx.references[key]`` or say that ``prepare`` did not run."""
    try:
        return ctx.references[key]
    except KeyError:
        raise PressoError(
            f"objective {objective!r}: no reference {key!r} in EvalContext.references; "
            "call prepare_all(objectives, ctx) once per worker before measuring"
        ) from None
