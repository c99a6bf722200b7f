"""Local worker processes sharing one store (``presso run --workers K``), on the tiny model."""

import os
import uuid
from collections import Counter

import pytest

from presso.errors import PressoError
from tests.search.test_executor_conformance import Follower as Recorder  # sees each stored trial once

POSTGRES = os.environ.get("PRESSO_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# Each trial costs tens of milliseconds: 2 sequences of 16 tokens, a space of 12 plans per block.
STUDY = {
    "model": "tiny:llama",
    "space": "builtin:tiny",
    "objectives": ["ppl_ratio", "size_fraction"],
    "sampler": "random",
    "device": "cpu",
    "tracking_uri": None,
    "eval": {"sequences": 2, "seq_len": 16},
    "heartbeat_s": 2,
    "grace_s": 8,
}


def _postgres_or_skip() -> str:
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(POSTGRES)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL at {POSTGRES} is not reachable: {' '.join(str(exc).split())[:120]}")
    return POSTGRES


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _delete(name, url):
    import optuna

    from presso.search import open_storage

    try:
        optuna.delete_study(study_name=name, storage=open_storage(url))
    except KeyError:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_four_workers_complete_exactly_200_trials(store, workdir):
    from presso.search import load_existing_study, status_counts, study_from_dict, trial_rows
    from presso.search.workers import run_study_workers

    url = f"sqlite:///{workdir}/studies.db" if store == "sqlite" else _postgres_or_skip()
    name = f"workers-{uuid.uuid4().hex[:8]}"
    config = study_from_dict({**STUDY, "name": name, "storage": url, "trials": 200, "workers": 4}, base_dir=str(workdir))
    recorder = Recorder()
    try:
        summary = run_study_workers(config, observers=[recorder], progress=False)
        study = load_existing_study(name, url)
        rows = trial_rows(study)
        counts = status_counts(study)
    finally:
        if store != "sqlite":
            _delete(name, url)

    counted = [r for r in rows if r.counted]
    assert summary.counted == len(counted) == 200 and not summary.interrupted
    assert summary.complete == counts.get("COMPLETE", 0) and summary.ran_here == 200
    # Nothing lost: no trial left running or queued; every other trial is a cancelled surplus.
    assert not {"RUNNING", "WAITING"} & set(counts), counts
    assert sum(counts.values()) == len(rows)
    assert all(r.counted or "cancelled" in r.user_attrs for r in rows), counts
    # Nothing duplicated: numbers are unique, and every counted trial ran once, in one worker,
    # with its own plan and results.
    assert sorted(r.number for r in rows) == list(range(len(rows)))
    assert all(r.plan and r.values and "total_s" in r.timings for r in counted)
    workers = Counter(r.user_attrs["worker"] for r in counted)
    assert 2 <= len(workers) <= 4, workers  # 4 processes, each built its Evaluator once
    # The parent's observers saw each stored trial once, between one start and one end.
    seen = [n for kind, n in recorder.calls if kind == "trial"]
    assert recorder.calls[0] == ("start", None) and recorder.calls[-1] == ("end", "FINISHED")
    assert sorted(seen) == sorted(r.number for r in counted)


def test_a_worker_usage_error_stops_the_run_with_its_message(workdir):
    from presso.search import study_from_dict
    from presso.search.workers import run_study_workers

    config = study_from_dict({**STUDY, "name": "bad-model", "model": "tiny:nope", "trials": 4, "workers": 2,
                              "storage": f"sqlite:///{workdir}/studies.db"}, base_dir=str(workdir))
    with pytest.raises(PressoError, match=r"worker \d stopped: model: unknown built-in 'tiny:nope'"):
        run_study_workers(config, progress=False)


@pytest.mark.slow
def test_workers_resume_a_study_started_in_one_process(workdir):
    """One store, whatever ran it: a study begun by ``run_study`` is finished by workers."""
    from presso.search import load_existing_study, run_study, study_from_dict, trial_rows
    from presso.search.workers import run_study_workers

    url = f"sqlite:///{workdir}/studies.db"
    config = study_from_dict({**STUDY, "name": "mixed", "storage": url, "trials": 8}, base_dir=str(workdir))
    assert run_study(config, progress=False, max_trials_here=3).counted == 3
    summary = run_study_workers(config.with_overrides(workers=2), progress=False)
    rows = trial_rows(load_existing_study("mixed", url))
    assert summary.counted == sum(r.counted for r in rows) == 8 and summary.ran_here == 5
