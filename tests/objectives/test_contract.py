"""The objective contract: registry, contexts, conformance of every registered objective,
size and latency, non-finite handling, the overlap check and import weight."""

from __future__ import annotations

import copy
import math
import subprocess
import sys

import pytest
import torch

from presso.errors import PressoError
from presso.objectives import (
    BaseObjective,
    Direction,
    EvalContext,
    NonFiniteObjective,
    Task,
    TrialContext,
    assert_disjoint,
    check_finite,
    get_objective,
    measure_all,
    objective_class,
    objective_directions,
    prepare_all,
    register_objective,
    registered_objectives,
    unregister_objective,
)

from .conftest import LABELLED, TAGGED, perturb_

BUILTIN = {
    "perplexity", "ppl_ratio", "kl_divergence", "embedding_cosine", "embedding_cosine_loss",
    "probe_accuracy", "size_bytes", "size_fraction", "latency_ms",
    "accuracy", "f1_macro", "f1_micro", "accuracy_drop", "f1_macro_drop",
}
# What the dense model scores against itself, where that is exact.
SELF_VALUE = {"ppl_ratio": 1.0, "kl_divergence": 0.0, "embedding_cosine": 1.0, "embedding_cosine_loss": 0.0,
              "accuracy_drop": 0.0, "f1_macro_drop": 0.0}
MODEL_FOR_TASK = {"causal-lm": "llama", "encoder": "bert", "sequence-classification": "seq_cls",
                  "token-classification": "token_cls"}
CASES = [
    (name, task.value)
    for name in sorted(BUILTIN)
    for task in objective_class(name).tasks
]


def test_builtins_are_registered():
    assert BUILTIN <= set(registered_objectives())


@pytest.mark.parametrize("name, task", CASES)
def test_conformance(name, task, request, make_ctx, trial):
    """Every registered objective: valid metadata; prepare once; measure a finite float on the
    dense model (exact where defined) and on a damaged copy without touching the references."""
    cls = objective_class(name)
    assert cls.name == name and isinstance(cls.direction, Direction) and cls.unit
    assert cls.__doc__ and cls.__doc__.strip()
    model = request.getfixturevalue(MODEL_FOR_TASK[task])
    ctx, (objective,) = make_ctx(task, model, [name], labelled=TAGGED if task == "token-classification" else LABELLED)
    references = dict(ctx.references)
    value = objective.measure(model, ctx, trial)
    assert isinstance(value, float) and math.isfinite(value)
    if name in SELF_VALUE:
        assert value == SELF_VALUE[name]
    damaged = perturb_(copy.deepcopy(model), scale=0.5)
    assert math.isfinite(objective.measure(damaged, ctx, TrialContext(number=1, size_bytes=1, dense_bytes=2)))
    assert ctx.references.keys() == references.keys()
    assert all(ctx.references[k] is references[k] for k in references)


def test_register_rejects_duplicates_and_bad_classes():
    with pytest.raises(PressoError, match="'ppl_ratio' is already registered"):

        @register_objective
        class Again(BaseObjective):
            name = "ppl_ratio"
            direction = Direction.MINIMIZE
            unit = "ratio"

            def compute(self, model, ctx, trial):
                return 1.0

    with pytest.raises(PressoError, match="direction"):

        @register_objective
        class NoDirection(BaseObjective):
            name = "no_direction"
            direction = "minimize"
            unit = ""

            def compute(self, model, ctx, trial):
                return 1.0

    with pytest.raises(PressoError, match="subclass of BaseObjective"):
        register_objective(object)
    assert "no_direction" not in registered_objectives()


def test_custom_objective_round_trip():
    @register_objective
    class ParamCount(BaseObjective):
        """Number of parameters."""

        name = "param_count_test"
        direction = Direction.MINIMIZE
        unit = "params"

        def compute(self, model, ctx, trial):
            return sum(p.numel() for p in model.parameters())

    try:
        objective = get_objective("param_count_test")
        ctx = EvalContext(task="encoder", device="cpu", input_ids=torch.ones(1, 2, dtype=torch.long))
        assert objective.measure(torch.nn.Linear(2, 3), ctx, TrialContext()) == 9.0
    finally:
        unregister_objective("param_count_test")
    assert "param_count_test" not in registered_objectives()


def test_unknown_objective_lists_names_and_suggests():
    with pytest.raises(PressoError, match=r"got 'ppl_ration' \(did you mean 'ppl_ratio'\?\); registered objectives: accuracy, accuracy_drop, "):
        get_objective("ppl_ration")


def test_directions_for_optuna():
    objectives = [get_objective("ppl_ratio"), get_objective("embedding_cosine")]
    assert objective_directions(objectives) == ["minimize", "maximize"]


def test_size_objectives():
    trial = TrialContext(number=3, size_bytes=250, dense_bytes=1000)
    ctx = EvalContext(task="causal-lm", device="cpu", input_ids=torch.ones(1, 2, dtype=torch.long))
    assert get_objective("size_bytes").measure(None, ctx, trial) == 250.0
    assert get_objective("size_fraction").measure(None, ctx, trial) == 0.25
    with pytest.raises(PressoError, match="dense_bytes is None"):
        get_objective("size_fraction").measure(None, ctx, TrialContext(size_bytes=3))
    with pytest.raises(PressoError, match="size_bytes is None"):
        get_objective("size_bytes").measure(None, ctx, TrialContext())


@pytest.mark.parametrize("field, value", [("size_bytes", -1), ("size_bytes", 1.5), ("dense_bytes", 0), ("dense_bytes", True)])
def test_trial_context_checks(field, value):
    with pytest.raises(PressoError, match=f"TrialContext.{field}"):
        TrialContext(**{field: value})


def test_latency_positive_and_synchronised_on_cpu(bert, make_ctx, trial, monkeypatch):
    ctx, (latency,) = make_ctx("encoder", bert, ["latency_ms"], options={"latency_ms": {"repeats": 3, "warmup": 1}})
    calls = []
    original = bert.forward
    monkeypatch.setattr(bert, "forward", lambda *a, **k: calls.append(k["input_ids"].shape) or original(*a, **k))
    value = latency.measure(bert, ctx, trial)
    assert value > 0.0
    assert calls == [(4, 16)] * 4  # 1 warmup + 3 timed passes of the fixed batch


@pytest.mark.parametrize("options", [{"repeats": 0}, {"warmup": -1}, {"batch_size": 0}])
def test_latency_bad_options(options):
    with pytest.raises(PressoError, match="latency_ms"):
        get_objective("latency_ms", **options)


class _Constant(BaseObjective):
    name = "constant_test"
    direction = Direction.MINIMIZE
    unit = ""
    needs_model = False

    def __init__(self, value):
        self.value = value

    def compute(self, model, ctx, trial):
        return self.value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), torch.tensor(float("nan"))])
def test_non_finite_raises_named_error(value):
    ctx = EvalContext(task="encoder", device="cpu", input_ids=torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(NonFiniteObjective, match="objective 'constant_test' measured a non-finite value") as info:
        measure_all([get_objective("size_bytes"), _Constant(value)], None, ctx, TrialContext(size_bytes=1))
    assert info.value.objective == "constant_test"
    assert isinstance(info.value, PressoError)


def test_check_finite_converts_and_rejects_junk():
    assert check_finite("x", torch.tensor(2.5)) == 2.5
    with pytest.raises(PressoError, match="allowed: a real number"):
        check_finite("x", "abc")


def test_task_mismatch_is_reported_before_prepare(bert, eval_batch):
    ctx = EvalContext(task="encoder", device="cpu", input_ids=eval_batch[0], dense_model=bert)
    with pytest.raises(PressoError, match="'perplexity' does not apply to task 'encoder'; it applies to: causal-lm"):
        prepare_all([get_objective("embedding_cosine"), get_objective("perplexity")], ctx)
    assert ctx.references == {}


def test_prepare_without_dense_model(eval_batch):
    ctx = EvalContext(task="encoder", device="cpu", input_ids=eval_batch[0])
    with pytest.raises(PressoError, match="dense_model is None"):
        prepare_all([get_objective("embedding_cosine")], ctx)


def test_measure_puts_model_in_eval_mode(bert, make_ctx, trial):
    ctx, (cosine,) = make_ctx("encoder", bert, ["embedding_cosine"])
    bert.train()
    assert cosine.measure(bert, ctx, trial) == 1.0  # dropout off, so still exact
    assert not bert.training


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "seq2seq"}, r"task: got 'seq2seq'; allowed: causal-lm, encoder"),
        ({"input_ids": torch.ones(4)}, "input_ids"),
        ({"input_ids": torch.ones(2, 3)}, "LongTensor"),
        ({"attention_mask": torch.ones(2, 4)}, "attention_mask: got shape"),
        ({"attention_mask": torch.tensor([[1, 1, 1], [0, 0, 0]])}, "no real token"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_eval_context_checks(kwargs, match):
    args = {"task": "encoder", "device": "cpu", "input_ids": torch.ones(2, 3, dtype=torch.long)} | kwargs
    with pytest.raises(PressoError, match=match):
        EvalContext(**args)


def test_eval_context_defaults_and_batches():
    ctx = EvalContext(task=Task.CAUSAL_LM, device="cpu", input_ids=torch.arange(10).view(5, 2), batch_size=2)
    assert ctx.task is Task.CAUSAL_LM and bool((ctx.attention_mask == 1).all())
    assert [ids.shape[0] for ids, _ in ctx.batches()] == [2, 2, 1]


def test_assert_disjoint():
    calib = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert_disjoint(calib, torch.tensor([[1, 2, 4], [7, 8, 9]]))
    assert_disjoint([[1, 2]], [[1, 2, 3]])  # different lengths are different sequences
    with pytest.raises(PressoError, match=r"1 evaluation sequence\(s\) also in calibration \(first: eval row 1 == calib row 0\)"):
        assert_disjoint(calib, torch.tensor([[0, 0, 0], [1, 2, 3]]))


def test_import_is_light():
    code = (
        "import sys, presso.objectives\n"
        "heavy = [m for m in ('torch', 'transformers', 'optuna', 'ray', 'mlflow') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
