"""Counts by state and the feasible Pareto front of a study, without reading every trial.

``study.get_trials()`` loads each trial whole (parameters, every attribute, distributions), so
its cost grows with the study and with what trials store; the CLI and the driver need far less.
:class:`StudyIndex` reads, with a few targeted SQL queries, only the trials' numbers, states,
the small ``values`` / ``failure`` / ``cancelled`` / ``low_values`` attributes and the
constraint values, and then keeps its counts and front up to date incrementally:

* a finished trial never changes again (Optuna refuses to write to it), so it is folded into
  the counts and the front once;
* ``floor`` is the lowest trial number that was still RUNNING or WAITING at the last refresh:
  every trial below it is folded, so a refresh reads only trials numbered from ``floor`` on
  (found by ``trial_id >= floor_id`` on the primary key: numbers follow trial ids within a
  study, and a filter on the ``study_id`` index would walk all of the study's rows)
  (the few recent ones), whatever the size of the study.

The details of a few trials (their metrics and plans, for the front) are read afterwards, one
trial at a time (:func:`full_rows`). Stores other than Optuna's RDBStorage (in-memory, journal)
are read through ``get_trials`` instead, with the same results.
"""

from __future__ import annotations

import json
from collections import Counter

from presso.search._records import TrialRow, objective_directions, objective_names, plan_source, row_from_trial, study_info

_OPEN = ("RUNNING", "WAITING")
_KEYS = ("failure", "cancelled", "low_values")
_CONSTRAINTS = "constraints"


def _rdb(study):
    """The study's Optuna RDBStorage, or None (Optuna wraps it in a cache layer)."""
    from optuna.storages import RDBStorage

    storage = study._storage
    storage = getattr(storage, "_backend", storage)
    return storage if isinstance(storage, RDBStorage) else None


def _category(row: TrialRow) -> str:
    """The state ``presso status`` shows: interrupted and cancelled trials apart from the rest."""
    if row.state == "FAIL" and row.failure is None:
        return "RETRIED"  # interrupted or lost with its worker; a retry was queued
    if row.state == "PRUNED" and "cancelled" in row.user_attrs:
        return "CANCELLED"
    return row.state


class StudyIndex:
    """Counts and front of one study, refreshed incrementally (see the module docs).

    Example::

        index = StudyIndex(study).refresh()
        index.counted, index.running, [r.number for r in index.front]
    """

    def __init__(self, study):
        self.study = study
        self.names = value_names(study)
        self.directions = objective_directions(study) or [d.name.lower() for d in study.directions]
        self.floor = 0
        self.floor_id = 0  # the trial id of trial ``floor`` (or the next one's lower bound)
        self.folded: dict[int, bool] = {}  # finished trials numbered >= floor, already folded in: counted?
        self.finished: Counter = Counter()  # category -> finished trials
        self.counted = 0  # trials that use up budget (TrialRow.counted)
        self.counted_failed = 0
        self.front: list[TrialRow] = []  # light rows: number, trial_id, values
        self.open: list[TrialRow] = []  # RUNNING / WAITING at the last refresh
        self._above_floor: list[TrialRow] = []

    @property
    def running(self) -> int:
        return sum(r.state == "RUNNING" for r in self.open)

    @property
    def waiting(self) -> int:
        return sum(r.state == "WAITING" for r in self.open)

    def counts(self) -> Counter:
        """Trials by :func:`_category`, open ones included."""
        return self.finished + Counter(r.state for r in self.open)

    def refresh(self) -> StudyIndex:
        from presso.objectives import pareto_front

        rows = light_rows(self.study, self.floor, self.names, from_id=self.floor_id)
        new = [r for r in rows if r.state not in _OPEN and r.number not in self.folded]
        candidates = []
        for row in new:
            self.finished[_category(row)] += 1
            self.counted += row.counted
            self.counted_failed += row.counted and row.state == "FAIL"
            self.folded[row.number] = row.counted
            if row.state == "COMPLETE" and row.feasible and all(n in row.values for n in self.names):
                candidates.append(row)
        if candidates and self.names:
            self.front = sorted(pareto_front([*self.front, *candidates], self.directions,
                                             key=lambda r: [r.values[n] for n in self.names]), key=lambda r: r.number)
        self.open = sorted((r for r in rows if r.state in _OPEN), key=lambda r: r.number)
        if self.open:
            self.floor, self.floor_id = self.open[0].number, self.open[0].trial_id or 0
        elif rows:
            last = max(rows, key=lambda r: r.number)
            self.floor, self.floor_id = last.number + 1, (last.trial_id or -1) + 1
        self.folded = {n: c for n, c in self.folded.items() if n >= self.floor}
        self._above_floor = [r for r in rows if r.number >= self.floor]
        return self

    def ahead_of(self, number: int) -> int:
        """Trials numbered below ``number`` that are counted, running or waiting, read now
        (the budget check of a freshly asked trial, which is open, so at or above ``floor``)."""
        self.refresh()
        if number < self.floor:  # cannot happen for an open trial; count directly
            rows = light_rows(self.study, 0, self.names)
            return sum(r.number < number and (r.counted or r.state in _OPEN) for r in rows)
        below_floor = self.counted - sum(self.folded.values())
        return below_floor + sum(r.number < number and (r.counted or r.state in _OPEN) for r in self._above_floor)


def value_names(study) -> list[str]:
    """The names of a study's values: its Presso objectives, else ``"0"``, ``"1"``, ... (a
    study made by plain Optuna, such as the sampler's tests use)."""
    return objective_names(study) or [str(i) for i in range(len(study.directions))]


def light_rows(study, from_number: int = 0, names: list[str] | None = None, from_id: int = 0) -> list[TrialRow]:
    """Trials numbered ``from_number`` and up as :class:`TrialRow` s that hold only number,
    trial id, state, values (Optuna's, named by ``names``), feasibility and the
    ``failure``/``cancelled``/``low_values`` attributes (no params, metrics or plan).
    ``from_id``: a trial id at or below that of trial ``from_number`` (see :func:`_window`)."""
    names = value_names(study) if names is None else names
    storage = _rdb(study)
    if storage is None:
        return [_light(t, names) for t in study.get_trials(deepcopy=False) if t.number >= from_number]
    from optuna.storages._rdb import models
    from sqlalchemy import select

    trials = models.TrialModel.__table__
    values = models.TrialValueModel.__table__
    user = models.TrialUserAttributeModel.__table__
    system = models.TrialSystemAttributeModel.__table__
    where = (trials.c.study_id == study._study_id, trials.c.number >= from_number)

    with storage.engine.connect() as conn:
        # States first: a trial that finishes between the queries has all its attributes by then.
        found = _window(conn, study, from_number, None, from_id)
        joined = _per_trial(trials, where, [row[0] for row in found], from_number)
        value_rows = conn.execute(joined(values, values.c.objective, values.c.value, values.c.value_type)).all()
        attrs = conn.execute(joined(user, user.c.key, user.c.value_json).where(user.c.key.in_(_KEYS))).all()
        constraints = conn.execute(
            joined(system, system.c.key, system.c.value_json).where(system.c.key.like(f"{_CONSTRAINTS}%"))).all()
    by_id: dict[int, dict] = {}
    for trial_id, key, value in attrs:
        by_id.setdefault(trial_id, {})[key] = json.loads(value)
    measured: dict[int, dict] = {}
    for trial_id, objective, value, kind in value_rows:
        if objective < len(names):
            measured.setdefault(trial_id, {})[names[objective]] = models.TrialValueModel.stored_repr_to_value(value, kind)
    violations: dict[int, list[float]] = {}
    for trial_id, key, value in constraints:
        value = json.loads(value)
        if key.startswith(f"{_CONSTRAINTS}:"):
            violations.setdefault(trial_id, []).append(float(value))
        elif key == _CONSTRAINTS and isinstance(value, list):
            violations.setdefault(trial_id, []).extend(float(v) for v in value)
    rows = []
    for trial_id, number, state in found:
        rows.append(TrialRow(
            number=number, state=getattr(state, "name", str(state)), values=measured.get(trial_id, {}),
            failure=by_id.get(trial_id, {}).get("failure"), feasible=all(v <= 0.0 for v in violations.get(trial_id, ())),
            user_attrs=by_id.get(trial_id, {}), trial_id=trial_id,
        ))
    return sorted(rows, key=lambda r: r.number)


def _window(conn, study, from_number: int, below: int | None, from_id: int) -> list[tuple]:
    """``(trial_id, number, state)`` of the study's trials numbered in ``[from_number, below)``.

    NOTE: with ``from_id`` (a trial id at or below that of trial ``from_number``) the rows are
    found on the primary key, ``trial_id >= from_id``, and the study picked here: numbers follow
    trial ids within a study, and both SQLite and PostgreSQL would otherwise walk every row of
    the study on the ``study_id`` index (50,000 rows for a window of a few trials)."""
    from optuna.storages._rdb import models
    from sqlalchemy import select

    trials = models.TrialModel.__table__
    columns = (trials.c.trial_id, trials.c.number, trials.c.state)
    if from_id > 0:
        rows = conn.execute(select(*columns, trials.c.study_id).where(trials.c.trial_id >= from_id)).all()
        return [(i, n, s) for i, n, s, study_id in rows if study_id == study._study_id
                and n >= from_number and (below is None or n < below)]
    where = [trials.c.study_id == study._study_id, trials.c.number >= from_number]
    if below is not None:
        where.append(trials.c.number < below)
    return conn.execute(select(*columns).where(*where)).all()


def _per_trial(trials, where, trial_ids: list[int], from_number: int):
    """A select of a per-trial table's rows for the trials ``where`` picks. A window of recent
    trials is looked up by id (the tables' (trial_id, key) indexes), so its cost does not grow
    with the study: joined on ``trials`` instead, PostgreSQL scans the whole table. A full read
    (or a large window) joins."""
    from sqlalchemy import select

    def joined(table, *columns):
        query = select(table.c.trial_id, *columns)
        if from_number > 0 and len(trial_ids) <= 1000:
            return query.where(table.c.trial_id.in_(trial_ids))
        return query.join(trials, table.c.trial_id == trials.c.trial_id).where(*where)

    return joined


def _numbered(conn, study, from_number: int, below: int | None, from_id: int):
    """``[(trial_id, number)]`` of the trials numbered in ``[from_number, below)``, and the
    :func:`_per_trial` select for their rows of any per-trial table."""
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    where = [trials.c.study_id == study._study_id, trials.c.number >= from_number]
    if below is not None:
        where.append(trials.c.number < below)
    numbers = [row[:2] for row in _window(conn, study, from_number, below, from_id)]
    return numbers, _per_trial(trials, where, [row[0] for row in numbers], from_number)


def _light(trial, names: list[str]) -> TrialRow:
    row = row_from_trial(trial)
    row.trial_id = trial._trial_id
    row.values = dict(zip(names, trial.values)) if trial.values is not None else {}
    return row


def waiting_trial_ids(study, from_id: int = 0) -> list[int] | None:
    """Trial ids of the study's queued (WAITING) trials by number, from one query on
    ``trials`` (from trial id ``from_id`` on: a queued trial is never below an index's
    ``floor_id``); None for stores other than Optuna's RDBStorage."""
    storage = _rdb(study)
    if storage is None:
        return None
    with storage.engine.connect() as conn:
        rows = _window(conn, study, 0, None, from_id)
    return [trial_id for trial_id, number, state in sorted(rows, key=lambda r: r[1])
            if getattr(state, "name", str(state)) == "WAITING"]


def full_rows(study, rows: list[TrialRow]) -> list[TrialRow]:
    """The complete rows (metrics, timings, params, plan on demand) of a few ``rows``."""
    plans = plan_source(study_info(study))
    out = []
    for row in rows:
        if row.trial_id is None:
            out.append(row)
            continue
        full = row_from_trial(study._storage.get_trial(row.trial_id), plans)
        full.trial_id = row.trial_id
        out.append(full)
    return out


def shared_index(study) -> StudyIndex:
    """The one :class:`StudyIndex` of ``study`` in this process (per storage object), so the
    driver's budget and the ``evo`` sampler fold the study's trials once, not once each."""
    # Kept on the storage object itself: a module-level map from storages to indexes that hold
    # their study (and so the storage) would keep every storage of a process alive.
    storage = study._storage
    indexes = storage.__dict__.setdefault("_presso_indexes", {})
    index = indexes.get(study._study_id)
    if index is None:
        index = indexes[study._study_id] = StudyIndex(study)
    index.study = study
    return index


def trial_system_attr(study, key: str, from_number: int = 0, below: int | None = None,
                      from_id: int = 0) -> dict[int, object]:
    """``{number: value of the trial system attribute key, or None}`` of the trials numbered in
    ``[from_number, below)`` (``from_id``: see :func:`_window`)."""
    storage = _rdb(study)
    if storage is None:
        return {t.number: t.system_attrs.get(key) for t in study.get_trials(deepcopy=False)
                if t.number >= from_number and (below is None or t.number < below)}
    from optuna.storages._rdb import models

    system = models.TrialSystemAttributeModel.__table__
    with storage.engine.connect() as conn:
        numbers, joined = _numbered(conn, study, from_number, below, from_id)
        found = dict(conn.execute(joined(system, system.c.value_json).where(system.c.key == key)).all())
    return {number: json.loads(found[trial_id]) if trial_id in found else None for trial_id, number in numbers}


def trial_params(study, from_number: int = 0, below: int | None = None, from_id: int = 0) -> dict[int, dict]:
    """``{number: params}`` of the trials numbered in ``[from_number, below)``; a queued trial
    that has no params yet gives the params it was enqueued with (``fixed_params``).
    ``from_id``: see :func:`_window`."""
    storage = _rdb(study)
    if storage is None:
        return {t.number: dict(t.params or t.system_attrs.get("fixed_params") or {})
                for t in study.get_trials(deepcopy=False)
                if t.number >= from_number and (below is None or t.number < below)}
    from optuna.distributions import json_to_distribution
    from optuna.storages._rdb import models

    params = models.TrialParamModel.__table__
    system = models.TrialSystemAttributeModel.__table__
    with storage.engine.connect() as conn:
        numbers, joined = _numbered(conn, study, from_number, below, from_id)
        values = conn.execute(joined(params, params.c.param_name, params.c.param_value, params.c.distribution_json)).all()
        fixed = conn.execute(joined(system, system.c.value_json).where(system.c.key == "fixed_params")).all()
    number_of = dict(numbers)
    out: dict[int, dict] = {number: {} for number in number_of.values()}
    distributions: dict[str, object] = {}  # a study has few distinct distributions: parse each once
    for trial_id, name, value, dist_json in values:
        dist = distributions.get(dist_json)
        if dist is None:
            dist = distributions[dist_json] = json_to_distribution(dist_json)
        out[number_of[trial_id]][name] = dist.to_external_repr(value)
    for trial_id, value in fixed:
        number = number_of[trial_id]
        if not out[number]:
            out[number] = dict(json.loads(value))
    return out
