"""The SQL study store on the three databases Presso supports: SQLite, PostgreSQL, MariaDB/MySQL.

PostgreSQL and MariaDB are the real servers of this machine (override with
``PRESSO_TEST_POSTGRES`` / ``PRESSO_TEST_MYSQL``); a test is skipped when its server does
not answer. Every test uses its own study name and deletes it.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter

import pytest

POSTGRES = os.environ.get("PRESSO_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("PRESSO_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
MYSQL_TEXT_BYTES = 65_535  # an Optuna attribute is a TEXT column: 64 KiB on MySQL/MariaDB


def _reachable(url: str) -> str | None:
    try:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: skip
        return " ".join(str(exc).split())[:120]


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/studies.db"
    url = POSTGRES if request.param == "postgresql" else MYSQL
    reason = _reachable(url)
    if reason:
        pytest.skip(f"{request.param} at {url} is not reachable: {reason}")
    return url


@pytest.fixture()
def study_name(store_url):
    import optuna

    from presso.search import open_storage

    name = f"stores-{uuid.uuid4().hex[:10]}"
    yield name
    try:
        optuna.delete_study(study_name=name, storage=open_storage(store_url))
    except KeyError:
        pass


def _smollm2_sized_plan():
    """A plan over SmolLM2-135M's 210 block Linears, with the longest values a space gives."""
    from presso.plan import AdapterConfig, LayerConfig, Plan, QuantConfig, SparsityConfig

    projections = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                   "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    layer = LayerConfig(sparsity=SparsityConfig(amount=0.30000000000000004), quant=QuantConfig(bits=8, group_size=128),
                        adapter=AdapterConfig(rank=16, alpha=32.0))
    layers = {f"model.layers.{i}.{p}": layer for i in range(30) for p in projections}
    return Plan(layers=layers, model="builtin:smollm2-135m", calibration_samples=128, calibration_seq_len=2048)


def test_a_smollm2_plan_fits_an_attribute_on_every_store(store_url, study_name):
    import optuna

    from presso.plan import plan_from_dict, plan_to_dict
    from presso.search import open_storage

    plan = _smollm2_sized_plan()
    stored = plan_to_dict(plan)
    size = len(json.dumps(stored))
    assert len(plan.layers) == 210
    # ~41 KB: under MySQL's 64 KiB TEXT with room to spare (about 320 layers would not fit).
    assert size < 0.75 * MYSQL_TEXT_BYTES, size
    study = optuna.create_study(study_name=study_name, storage=open_storage(store_url))
    trial = study.ask()
    trial.set_user_attr("plan", stored)
    study.tell(trial, 1.0)
    again = optuna.load_study(study_name=study_name, storage=open_storage(store_url)).trials[0]
    assert plan_from_dict(again.user_attrs["plan"]) == plan


def test_mysql_refuses_an_oversized_attribute_instead_of_truncating_it():
    """In strict mode (the default since MySQL 5.7 and MariaDB 10.2.4) a too-long plan fails its
    trial loudly; a non-strict server would store a truncated, unreadable plan."""
    import optuna

    from presso.search import open_storage

    reason = _reachable(MYSQL)
    if reason:
        pytest.skip(f"mysql at {MYSQL} is not reachable: {reason}")
    storage = open_storage(MYSQL)
    with storage.engine.connect() as connection:
        mode = connection.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar()
    assert "STRICT_TRANS_TABLES" in mode or "STRICT_ALL_TABLES" in mode, mode
    name = f"stores-{uuid.uuid4().hex[:10]}"
    study = optuna.create_study(study_name=name, storage=storage)
    try:
        trial = study.ask()
        with pytest.raises(optuna.exceptions.StorageInternalError):
            trial.set_user_attr("plan", "x" * (MYSQL_TEXT_BYTES + 1000))
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_a_stale_trial_is_failed_and_retried_on_every_store(store_url, study_name):
    """The heartbeat clock is the database's own ``now()`` (timezone quirks differ per server)."""
    import optuna

    from presso.search import open_storage

    storage = open_storage(store_url, heartbeat_s=1, grace_s=2)
    study = optuna.create_study(study_name=study_name, storage=storage)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(trial._trial_id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        optuna.storages.fail_stale_trials(study)
        states = [t.state.name for t in study.get_trials(deepcopy=False)]
        if states == ["FAIL", "WAITING"]:
            break
        time.sleep(0.5)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].system_attrs["failed_trial"] == trial.number and trials[1].params == trials[0].params


CLAIMER = textwrap.dedent("""
    import json, sys, optuna
    from presso.search import open_storage
    from presso.search._driver import ask
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=sys.argv[2], storage=open_storage(sys.argv[1]))
    claimed = []
    while (trial := ask(study))._fixed_params:  # then a new trial: the queue is empty
        claimed.append(trial._trial_id)
    print(json.dumps(claimed))
""")


def test_four_processes_never_claim_the_same_waiting_trial(store_url, study_name):
    """Queued trials (warm start, retries) are claimed once each by the driver's ``ask``. Before SQLite transactions
    began with ``BEGIN IMMEDIATE``, 4 processes claimed 31 of 200 queued trials twice."""
    import optuna

    from presso.search import open_storage

    study = optuna.create_study(study_name=study_name, storage=open_storage(store_url))
    queued = 60
    for i in range(queued):
        study.enqueue_trial({"x": float(i)}, skip_if_exists=False)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, store_url, study_name], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    claimed = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        claimed += json.loads(out.strip().splitlines()[-1])
    counts = Counter(claimed)
    assert len(claimed) == queued and len(counts) == queued, [k for k, v in counts.items() if v > 1]
