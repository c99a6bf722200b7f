"""How Presso's answers scale with the study: database size, and wall time and peak memory of
``presso status``, ``presso pareto --format json``, ``presso export`` (and a malformed
``export``), and one ask + tell of the driver, for studies of 1,000 / 10,000 (/ 50,000) trials
of the SmolLM2 space, on SQLite and PostgreSQL; ``--spaces`` prints what a trial of each
built-in space costs in the database, table by table.

    python benchmarks/scale.py [--sizes 1000,10000] [--big] [--backends sqlite,postgres]
                               [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
    python benchmarks/scale.py --spaces [--trials 300]

How a study is built: the first 50 trials go through Presso's own writer (``open_study``,
``ask_with_heartbeat``, ``suggest`` on the SmolLM2 space bound to SmolLM2's 211 modules, and
``tell_outcome`` with made-up values and the real metric and timing keys; the ``evo`` sampler,
still in its random start-up, so each trial carries its parameter digest), so every row is laid
out as a real study's; the rest are copies of those rows (new trial ids and numbers, values
perturbed), written with bulk inserts, because 10,000 real asks would take hours.
Each measured command runs in a fresh process (peak memory is that process's max RSS, wall
time includes Python's start-up and imports). Ask + tell: one process resumes the big study
and a 100-trial study in the same store; "first" is its first ask on the big study (what a
resumed study's user waits for); then asks alternate between the two studies (12 each), so
the machine's load hits both alike, and the ratio is of their medians.
SQLite studies live in a temporary file; on PostgreSQL each size gets a database of its own,
created on the server of ``--postgres`` and dropped after.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REAL_TRIALS = 50
REF_TRIALS = 100  # the study an ask + tell is compared with
OBJECTIVES = ("ppl_ratio", "size_fraction")
CONSTRAINTS = ("ppl_ratio <= 2.0",)
PICK = "min size_fraction where ppl_ratio <= 1.5"


def smollm2_view():
    """What the driver needs of an Evaluator for SmolLM2 (its modules, from the config on the
    meta device: no weights are loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from presso.compress import compressible_modules, embedding_modules
    from presso.models import _smollm2_cached
    from presso.objectives import parse_constraint
    from presso.search._evaluator import ObjectiveSpec
    from presso.spaces import load_space

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(_smollm2_cached()))
    space = load_space("builtin:smollm2-135m")
    modules, exact = list(compressible_modules(model)), list(embedding_modules(model))
    return SimpleNamespace(
        space_dict=space.to_dict(), bound=space.bind(modules, exact_names=exact), module_names=modules,
        embedding_names=exact, objective_specs=[ObjectiveSpec("ppl_ratio", "minimize", "x"),
                                                ObjectiveSpec("size_fraction", "minimize", "")],
        constraints=[parse_constraint(c, known=[*OBJECTIVES]) for c in CONSTRAINTS],
    )


def study_config(name: str, url: str, trials: int):
    from presso.search import StudyConfig

    return StudyConfig(name=name, model="builtin:smollm2-135m", space="builtin:smollm2-135m", objectives=OBJECTIVES,
                       constraints=CONSTRAINTS, trials=trials, storage=url, tracking_uri=None, sampler="evo",
                       device="cpu")


def fake_outcome(rng: random.Random):
    from presso.search._evaluator import Outcome

    size = rng.uniform(0.12, 0.5)
    ppl = 1.0 + 0.08 / size * rng.uniform(0.8, 1.2)
    metrics = {"size_bytes": size * 538e6, "dense_bytes": 538e6, "covered_fraction": 0.99, "mean_bits": 4.2,
               "mean_sparsity": 0.1}
    timings = {"load_s": 0.0, "compress_s": 2.1, "evaluate_s": 3.4, "quantize_s": 1.2, "prune_s": 0.4}
    return Outcome(values={"ppl_ratio": ppl, "size_fraction": size}, metrics=metrics, timings=timings)


def write_real_trials(study, storage, view, n: int, rng: random.Random) -> None:
    from presso.search._driver import ask_with_heartbeat, tell_outcome
    from presso.search.optuna_space import suggest

    for _ in range(n):
        started = time.perf_counter()
        trial = ask_with_heartbeat(study, storage)
        trial.set_user_attr("worker", f"bench:{os.getpid()}")
        suggest(trial, view.bound, model="builtin:smollm2-135m")
        tell_outcome(study, trial, fake_outcome(rng), view.objective_specs, view.constraints, started)


def copy_trials(storage, study_id: int, total: int, rng: random.Random) -> None:
    """Grow the study to ``total`` trials with copies of its trials' rows (values perturbed)."""
    from optuna.storages._rdb import models
    from sqlalchemy import func, insert, select

    per_trial = [models.TrialParamModel, models.TrialValueModel, models.TrialUserAttributeModel,
                 models.TrialSystemAttributeModel, models.TrialHeartbeatModel]
    trials = models.TrialModel.__table__
    with storage.engine.begin() as conn:
        templates = [dict(r._mapping) for r in conn.execute(select(trials).where(trials.c.study_id == study_id))]
        children = {}
        for model in per_trial:
            table = model.__table__
            rows = conn.execute(select(table).join(trials, table.c.trial_id == trials.c.trial_id)
                                .where(trials.c.study_id == study_id)).all()
            pk = next(c.name for c in table.primary_key.columns)
            children[model] = (table, pk, [dict(r._mapping) for r in rows])
        next_id = conn.execute(select(func.max(trials.c.trial_id))).scalar() + 1
        number = len(templates)
    while number < total:
        batch = min(2000, total - number)
        new_trials, new_rows = [], {m: [] for m in per_trial}
        for _ in range(batch):
            template = templates[number % len(templates)]
            scale = rng.uniform(0.9, 1.1)
            new_trials.append({**template, "trial_id": next_id, "number": number})
            for model, (table, pk, rows) in children.items():
                for row in rows:
                    if row["trial_id"] != template["trial_id"]:
                        continue
                    row = {k: v for k, v in row.items() if k != pk} | {"trial_id": next_id}
                    if model is models.TrialValueModel and row["value"] is not None:
                        row["value"] *= scale
                    if model is models.TrialUserAttributeModel and row["key"] == "values":
                        row["value_json"] = json.dumps({k: v * scale for k, v in json.loads(row["value_json"]).items()})
                    if model is models.TrialSystemAttributeModel and row["key"].startswith("constraints:"):
                        row["value_json"] = json.dumps(json.loads(row["value_json"]) * scale)
                    new_rows[model].append(row)
            next_id += 1
            number += 1
        with storage.engine.begin() as conn:
            conn.execute(insert(trials), new_trials)
            for model, rows in new_rows.items():
                if rows:
                    conn.execute(insert(model.__table__), rows)
    if storage.engine.dialect.name == "postgresql":  # explicit trial ids do not move the id sequence
        from sqlalchemy import text

        with storage.engine.begin() as conn:
            conn.execute(text("select setval(pg_get_serial_sequence('trials', 'trial_id'), (select max(trial_id) from trials))"))


def db_bytes(url: str, storage) -> int:
    from sqlalchemy import text

    if url.startswith("sqlite"):
        import sqlite3

        path = Path(storage.engine.url.database)
        storage.engine.dispose()
        with sqlite3.connect(path) as conn:  # fold the write-ahead log into the file first
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    tables = ["trials", "trial_params", "trial_values", "trial_user_attributes", "trial_system_attributes",
              "trial_heartbeats", "studies", "study_user_attributes", "study_system_attributes", "study_directions"]
    with storage.engine.connect() as conn:
        return sum(conn.execute(text(f"select pg_total_relation_size('{t}')")).scalar() or 0 for t in tables)


def build(url: str, name: str, size: int, view) -> tuple[int, float]:
    """Create study ``name`` of ``size`` trials; returns (bytes added, seconds)."""
    import optuna

    from presso.search._driver import open_study
    from presso.search._evolution import LocalSearchSampler
    from presso.search._storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    storage = open_storage(url)
    before = db_bytes(url, storage)
    study, _ = open_study(study_config(name, url, size), storage, view)
    study.sampler = LocalSearchSampler(seed=0, n_startup_trials=size + 1)  # random plans, evo's layout
    rng = random.Random(0)
    write_real_trials(study, storage, view, min(REAL_TRIALS, size), rng)
    copy_trials(storage, study._study_id, size, rng)
    added = db_bytes(url, storage) - before
    storage.engine.dispose()
    return added, time.perf_counter() - started


ASK_TELL = r"""
import json, os, random, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import optuna
from benchmarks.scale import peak_mb, fake_outcome, smollm2_view
from presso.search._driver import _Budget, ask_with_heartbeat, tell_outcome
from presso.search._evolution import LocalSearchSampler
from presso.search._storage import open_storage
from presso.search.optuna_space import suggest
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, big, big_size, ref, ref_size = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
view = smollm2_view()
storage = open_storage(url)
rng = random.Random(1)

def opened(name, size):
    study = optuna.load_study(study_name=name, storage=storage, sampler=LocalSearchSampler(seed=1))
    return study, _Budget(study, size + 1000)

def ask_tell(study, budget):
    t0 = time.perf_counter()
    optuna.storages.fail_stale_trials(study)
    budget.snapshot()
    trial = ask_with_heartbeat(study, storage)
    assert not budget.surplus(trial.number)
    suggest(trial, view.bound, model="builtin:smollm2-135m")
    tell_outcome(study, trial, fake_outcome(rng), view.objective_specs, view.constraints, t0)
    return time.perf_counter() - t0

studies = {"big": opened(big, big_size), "ref": opened(ref, ref_size)}
first = ask_tell(*studies["big"])
ask_tell(*studies["ref"])
times = {"big": [], "ref": []}
for _ in range(12):
    for key in ("ref", "big"):
        times[key].append(ask_tell(*studies[key]))
big_s, ref_s = statistics.median(times["big"]), statistics.median(times["ref"])
print(json.dumps({"first_s": first, "median_s": big_s, "ref_median_s": ref_s, "ratio": big_s / ref_s,
                  "rss_mb": peak_mb()}))
"""

CLI = r"""
import contextlib, io, json, sys, time
sys.path.insert(0, sys.argv[1])
from benchmarks.scale import peak_mb
t0 = time.perf_counter()
from presso.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    code = main(sys.argv[2:])
print(json.dumps({"code": code, "in_process_s": time.perf_counter() - t0,
                  "rss_mb": peak_mb()}))
"""


def peak_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across
    fork + exec from the benchmark's own, larger process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_child(code: str, args: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(ROOT), *args], capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{args}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def measure(url: str, name: str, size: int, ref: str, tmp: Path) -> dict:
    out: dict = {}
    store = ["--study", name, "--storage", url]
    out["status"] = run_child(CLI, ["status", *store])
    out["pareto"] = run_child(CLI, ["pareto", *store, "--format", "json"])
    out["export"] = run_child(CLI, ["export", *store, "--pick", PICK, "-o", str(tmp / f"{name}.yaml"), "--force"])
    out["export_bad"] = run_child(CLI, ["export", *store, "--pick", "smallest size", "-o", str(tmp / "x.yaml")])
    for key in ("status", "pareto", "export"):
        assert out[key]["code"] == 0, (key, out[key])
    assert out["export_bad"]["code"] == 2
    out["ask_tell"] = run_child(ASK_TELL, [url, name, str(size), ref, str(REF_TRIALS)])
    return out


# Built-in space -> how to get the module names it binds to (configs on the meta device, no weights).
SPACE_MODELS = {
    "smollm2-135m": "smollm2", "smollm2-135m-gguf": "smollm2", "smollm2-135m-ct": "smollm2",
    "minilm-l6": "minilm", "minilm-l6-ct": "minilm", "minilm-newsgroups": "minilm-classifier", "tiny": "tiny:llama",
}


def module_names(kind: str) -> tuple[list[str], list[str]]:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    from presso.compress import compressible_modules, embedding_modules
    from presso.models import _smollm2_cached, load_model, minilm_dir

    if kind.startswith("tiny:"):
        model = load_model(kind).model
    else:
        with torch.device("meta"):
            if kind == "smollm2":
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(_smollm2_cached()))
            elif kind == "minilm":
                model = AutoModel.from_config(AutoConfig.from_pretrained(minilm_dir()))
            else:
                model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(minilm_dir(), num_labels=2))
    return list(compressible_modules(model)), list(embedding_modules(model))


def table_bytes(path: Path) -> dict[str, int]:
    """Bytes of each table of an SQLite file, its indexes included (``dbstat``)."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        indexes = dict(conn.execute("select name, tbl_name from sqlite_master where type = 'index'").fetchall())
        sizes: dict[str, int] = {}
        for name, size in conn.execute("select name, sum(pgsize) from dbstat group by name"):
            table = indexes.get(name, name)
            sizes[table] = sizes.get(table, 0) + size
    return sizes


def space_table(trials: int) -> None:
    """Per built-in space: parameters a trial, and the database bytes a trial adds by table, from
    ``trials`` trials written by Presso's writer into a fresh SQLite file; and what Optuna's
    ``trial_params`` rows would take with no distribution at all (the layout's floor)."""
    import sqlite3

    import optuna

    from presso.objectives import parse_constraint
    from presso.search._driver import open_study
    from presso.search._evaluator import ObjectiveSpec
    from presso.search._evolution import LocalSearchSampler
    from presso.search._storage import open_storage
    from presso.spaces import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{trials} trials a space, written by Presso's writer (ask, suggest, tell) into SQLite; bytes a trial:")
    print("| space | params a trial | trial_params + index | of it, with no distribution JSON | Presso attributes "
          "(user + system) | rest (trials, values, heartbeats) | total |")
    print("|---|---|---|---|---|---|---|")
    groups = {"trial_params": "params", "trial_user_attributes": "presso", "trial_system_attributes": "presso"}
    with tempfile.TemporaryDirectory(prefix="presso-spaces-") as tmp:
        for space_name, kind in SPACE_MODELS.items():
            space = load_space(f"builtin:{space_name}")
            blocks, exact = module_names(kind)
            view = SimpleNamespace(
                space_dict=space.to_dict(), bound=space.bind(blocks, exact_names=exact), module_names=blocks,
                embedding_names=exact, objective_specs=[ObjectiveSpec("ppl_ratio", "minimize", "x"),
                                                        ObjectiveSpec("size_fraction", "minimize", "")],
                constraints=[parse_constraint(c, known=[*OBJECTIVES]) for c in CONSTRAINTS])
            path = Path(tmp) / f"{space_name}.db"
            url = f"sqlite:///{path}"
            storage = open_storage(url)
            study, _ = open_study(study_config(space_name, url, trials), storage, view)
            study.sampler = LocalSearchSampler(seed=0, n_startup_trials=trials + 1)
            storage.engine.dispose()
            before = table_bytes(path)
            write_real_trials(study, storage, view, trials, random.Random(0))
            storage.engine.dispose()
            after = table_bytes(path)
            added: dict[str, float] = {}
            for table in after:
                group = groups.get(table, "rest")
                added[group] = added.get(group, 0) + (after[table] - before.get(table, 0)) / trials
            with sqlite3.connect(path) as conn:
                n_params = conn.execute("select count(*) from trial_params").fetchone()[0] / trials
                conn.execute("create table bare (param_id integer primary key, trial_id integer, param_name varchar(512), "
                             "param_value float, distribution_json text, unique (trial_id, param_name))")
                conn.execute("insert into bare select param_id, trial_id, param_name, param_value, '' from trial_params")
            bare = table_bytes(path)["bare"] / trials
            total = sum(added.values())
            print(f"| {space_name} | {n_params:.1f} | {added.get('params', 0):,.0f} | {bare:,.0f} | "
                  f"{added.get('presso', 0):,.0f} | {added.get('rest', 0):,.0f} | {total:,.0f} |", flush=True)


@contextmanager
def postgres_database(server_url: str):
    """A fresh database on the server of ``server_url`` (its URL), dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"presso_scale_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def store(backend: str, tmp: Path, postgres: str, name: str):
    if backend == "sqlite":
        yield f"sqlite:///{tmp}/{name}.db"
    elif backend == "postgres":
        with postgres_database(postgres) as url:
            yield url
    else:
        raise SystemExit(f"--backends: got {backend!r}; allowed: sqlite, postgres")


def scale_table(args, view) -> None:
    sizes = [int(s) for s in args.sizes.split(",")] + ([50_000] if args.big else [])
    print(f"SmolLM2 space: {len(view.bound.units)} units, {len(view.module_names) + len(view.embedding_names)} modules")
    print("| store | trials | DB bytes/trial | build s | status s / MB | pareto json s / MB | export s / MB | "
          "malformed export s | first ask s | ask+tell ms: N / 100 trials | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="presso-scale-") as tmp:
        tmp = Path(tmp)
        for backend in args.backends.split(","):
            for size in sizes:
                name = f"scale-{size}-{uuid.uuid4().hex[:8]}"
                with store(backend, tmp, args.postgres, name) as url:
                    ref = f"ref-{uuid.uuid4().hex[:8]}"
                    build(url, ref, REF_TRIALS, view)
                    added, build_s = build(url, name, size, view)
                    m = measure(url, name, size, ref, tmp)

                def cell(key):
                    return f"{m[key]['wall_s']:.2f} / {m[key]['rss_mb']:.0f}"

                at = m["ask_tell"]
                print(f"| {backend} | {size:,} | {added / size:,.0f} | {build_s:.0f} | {cell('status')} | "
                      f"{cell('pareto')} | {cell('export')} | {m['export_bad']['wall_s']:.2f} | {at['first_s']:.2f} | "
                      f"{at['median_s'] * 1000:.0f} / {at['ref_median_s'] * 1000:.0f} | {at['ratio']:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--big", action="store_true", help="also 50,000 trials")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="a database on the server where each size gets a fresh database")
    parser.add_argument("--spaces", action="store_true", help="bytes per trial of each built-in space, by table")
    parser.add_argument("--trials", type=int, default=300, help="--spaces: trials written per space")
    args = parser.parse_args()
    if args.spaces:
        space_table(args.trials)
    else:
        scale_table(args, smollm2_view())


if __name__ == "__main__":
    main()
