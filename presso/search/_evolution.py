"""``evo``: an EvoPress-style local search around the Pareto front.

Each trial after the start-up copies one parent, drawn uniformly from the feasible,
non-dominated complete trials, and mutates it a little (the front and the plans already tried
are kept between asks and only recent trials are read again, so an ask costs the same in a
study of 10,000 trials as in one of 100):

* ``step`` (half the time): one parameter, plus a geometric number of extra ones (1.5 in all
  on average), each moved one level up or down;
* ``switch`` (the other half): EvoPress's level switching (Sieberling et al., 2024, "EvoPress:
  Towards Optimal Dynamic Model Compression via Evolutionary Search"): two parameters of the
  same kind (same name suffix, e.g. two ``.../bits``, and the same distribution) move one level
  in opposite directions, so the plan keeps about its size while compression moves between units.

A "level" is a position in a parameter's ordered values: sorted numeric choices, or ``low +
k * step``. Children equal to their parent or to any trial already in the study are redrawn;
after 20 misses the trial is sampled at random. Until ``n_startup_trials`` trials are complete,
or while none is feasible, every trial is random.

Why not NSGA-II: with tens of trials it gets a few generations of 10, and each child mixes
two parents unit by unit (uniform crossover) and resamples some units anywhere in their range,
so it often lands far from the front; in Presso studies it found nothing better than the warm-start
plans. EvoPress shows that small moves around the best plans, with level switching to keep
the size, find good non-uniform plans in such discrete spaces. On the synthetic 12-unit
problem of ``tests/search/test_evolution.py`` (60 trials, 10 seeds) it closes 47% of the
hypervolume gap between the uniform plans and the exact front, NSGA-II and random 37%.

Each child records ``{"parent": number, "move": "step"|"switch"}`` in the trial system
attribute ``presso:evo``. Every trial the sampler sees told gets a 16-hex digest of its
parameters in ``presso:params``, so the plans already tried are known from one small
attribute a trial instead of every trial's parameter rows (50 a trial for SmolLM2); trials
without it (studies from before, trials failed by a dead worker) are read from their params.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial


PARENT_ATTR = "presso:evo"
DIGEST_ATTR = "presso:params"
_MAX_TRIES = 20


class LocalSearchSampler(optuna.samplers.BaseSampler):
    """Local search around the Pareto front with step and level-switching mutations (see the module docs).

    Args:
        seed: seeds the mutations (per trial number, so workers sharing a seed and a study
            still draw different children) and the internal random sampler.
        n_startup_trials: complete trials needed before mutating; until then it samples at random.

    Example::

        >>> study = optuna.create_study(directions=["minimize", "minimize"],
        ...                             sampler=LocalSearchSampler(seed=0))
    """

    def __init__(self, seed: int | None = None, n_startup_trials: int = 5) -> None:
        self._seed = seed
        self._n_startup_trials = n_startup_trials
        self._rng = random.Random(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        # trial id -> the child's params, or None for a random trial: fixed at the first ask.
        self._children: dict[int, dict[str, Any] | None] = {}
        self._memories: dict[tuple, _StudyMemory] = {}

    def reseed_rng(self) -> None:
        self._rng.seed()
        self._seed = None
        self._random.reseed_rng()

    def infer_relative_search_space(self, study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial: FrozenTrial, search_space) -> dict[str, Any]:
        return {}

    def sample_independent(self, study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution):
        if trial._trial_id not in self._children:
            self._children[trial._trial_id] = self._plan(study, trial)
        child = self._children[trial._trial_id]
        if child is not None and param_name in child and _contains(param_distribution, child[param_name]):
            return child[param_name]
        # A conditional parameter the parent did not have, or a distribution that changed.
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial: FrozenTrial, state, values) -> None:
        self._children.pop(trial._trial_id, None)
        if trial.params:  # called before the trial is finished, so it can still be written
            study._storage.set_trial_system_attr(trial._trial_id, DIGEST_ATTR, _digest(trial.params))

    def _plan(self, study, trial: FrozenTrial) -> dict[str, Any] | None:
        memory = self._memory(study)
        index = memory.index.refresh()
        if index.finished["COMPLETE"] < self._n_startup_trials or not index.front:
            return None
        # Seeding per trial number: concurrent workers with one seed must not draw the same child.
        rng = random.Random(f"{self._seed}/{trial.number}") if self._seed is not None else self._rng
        seen = memory.seen()
        for _ in range(_MAX_TRIES):
            parent = memory.parent(rng.choice(index.front))
            child, move = _mutate(parent.params, parent.distributions, rng)
            if child is not None and all(_digest(child) not in plans for plans in seen):
                study._storage.set_trial_system_attr(trial._trial_id, PARENT_ATTR, {"parent": parent.number, "move": move})
                return child
        return None  # the neighbourhood of the front is used up: a random child instead

    def _memory(self, study) -> _StudyMemory:
        key = (id(study._storage), study._study_id)
        if key not in self._memories:
            self._memories[key] = _StudyMemory(study)
        memory = self._memories[key]
        memory.index.study = memory.study = study
        return memory


class _StudyMemory:
    """What the sampler keeps of one study between asks, so an ask reads only recent trials:
    the front (a :class:`~presso.search._index.StudyIndex`), the parents' full trials, and the
    plans already tried (final below the index's floor, re-read above it)."""

    def __init__(self, study) -> None:
        from presso.search._index import shared_index

        self.study = study
        self.index = shared_index(study)  # the driver's budget reads the same one
        self.parents: dict[int, FrozenTrial] = {}
        self.final: set[str] = set()  # digests of the plans of trials below ``final_floor`` (all finished)
        self.final_floor = self.final_floor_id = 0

    def parent(self, row) -> FrozenTrial:
        if row.trial_id not in self.parents:
            if len(self.parents) > 4 * len(self.index.front) + 16:  # forget parents that left the front
                on_front = {r.trial_id for r in self.index.front}
                self.parents = {k: v for k, v in self.parents.items() if k in on_front}
            self.parents[row.trial_id] = self.study._storage.get_trial(row.trial_id)
        return self.parents[row.trial_id]

    def seen(self) -> tuple[set[str], set[str]]:
        """Digests of every plan already tried or enqueued (an enqueued trial keeps its plan in
        fixed_params): those of finished trials below the floor (their ``presso:params``, or
        their params where they have none), and those of the trials above it."""
        from presso.search._index import trial_params, trial_system_attr

        floor, floor_id = self.index.floor, self.index.floor_id
        if floor > self.final_floor:
            digests = trial_system_attr(self.study, DIGEST_ATTR, self.final_floor, below=floor, from_id=self.final_floor_id)
            self.final.update(d for d in digests.values() if d is not None)
            missing = [n for n, d in digests.items() if d is None]
            if missing:
                params = trial_params(self.study, min(missing), below=max(missing) + 1)
                self.final.update(_digest(params[n]) for n in missing if params.get(n))
            self.final_floor, self.final_floor_id = floor, floor_id
        return self.final, {_digest(p) for p in trial_params(self.study, floor, from_id=floor_id).values()}


def _mutate(params: dict, dists: dict, rng: random.Random) -> tuple[dict | None, str]:
    """A child of ``params`` and the move that made it (``step`` or ``switch``)."""
    movable = sorted(name for name in params if _neighbour(dists[name], params[name], 1, rng) is not None
                     or _neighbour(dists[name], params[name], -1, rng) is not None)
    if not movable:
        return None, "step"
    child = dict(params)
    if rng.random() < 0.5 and _switch(child, dists, movable, rng):
        return child, "switch"
    # A step move, also when no two parameters of one kind can switch.
    n = 1
    while rng.random() < 1 / 3 and n < len(movable):  # geometric extras: 1.5 parameters on average
        n += 1
    for name in rng.sample(movable, n):
        child[name] = _step(dists[name], child[name], rng.choice((1, -1)), rng)
    return child, "step"


def _switch(child: dict, dists: dict, movable: list[str], rng: random.Random) -> bool:
    """Move one parameter up a level and another of the same kind down one; False if none can."""
    pairs = []
    for i, a in enumerate(movable):
        for b in movable[i + 1:]:
            if a.rsplit("/", 1)[-1] == b.rsplit("/", 1)[-1] and dists[a] == dists[b] and _ordered(dists[a]):
                for up, down in ((a, b), (b, a)):
                    if _neighbour(dists[up], child[up], 1, rng) is not None and _neighbour(dists[down], child[down], -1, rng) is not None:
                        pairs.append((up, down))
    if not pairs:
        return False
    up, down = rng.choice(pairs)
    child[up] = _neighbour(dists[up], child[up], 1, rng)
    child[down] = _neighbour(dists[down], child[down], -1, rng)
    return True


def _step(dist: BaseDistribution, value, direction: int, rng: random.Random):
    """One level in ``direction``, or the other way at a bound."""
    moved = _neighbour(dist, value, direction, rng)
    return moved if moved is not None else _neighbour(dist, value, -direction, rng)


def _ordered(dist: BaseDistribution) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return all(_is_number(c) for c in dist.choices)
    return True


def _neighbour(dist: BaseDistribution, value, direction: int, rng: random.Random):
    """The value one level up (+1) or down (-1) from ``value``, or None past a bound."""
    if isinstance(dist, CategoricalDistribution):
        if not _ordered(dist):  # unordered choices: any other one is a neighbour
            others = [c for c in dist.choices if c != value]
            return rng.choice(others) if others else None
        levels = sorted(dist.choices)
        i = levels.index(value) + direction
        return levels[i] if 0 <= i < len(levels) else None
    if isinstance(dist, IntDistribution):
        moved = value + direction * dist.step
        return moved if dist.low <= moved <= dist.high else None
    if isinstance(dist, FloatDistribution):
        if dist.step is not None:
            # low + k * step, as Optuna's own samplers compute it, so equal plans compare equal.
            k = round((value - dist.low) / dist.step) + direction
            n = round((dist.high - dist.low) / dist.step)
            return min(dist.low + k * dist.step, dist.high) if 0 <= k <= n else None
        # Continuous (rare in these spaces): a random jump of up to a tenth of the range.
        if (direction > 0 and value >= dist.high) or (direction < 0 and value <= dist.low):
            return None
        if dist.log:
            width = math.log(dist.high) - math.log(dist.low)
            moved = math.exp(math.log(value) + direction * rng.uniform(0.01, 0.1) * width)
        else:
            moved = value + direction * rng.uniform(0.01, 0.1) * (dist.high - dist.low)
        return min(max(moved, dist.low), dist.high)
    return None


def _contains(dist: BaseDistribution, value) -> bool:
    try:
        return dist._contains(dist.to_internal_repr(value))
    except (ValueError, TypeError):
        return False


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _digest(params: dict) -> str:
    """16 hex digits that tell plans apart. Numbers are compared as rounded floats, so that
    0.30000000000000004 and 0.3, or an enqueued 4 and a stored 4.0, are one plan."""
    items = sorted((k, round(float(v), 9) if _is_number(v) else v) for k, v in params.items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]
