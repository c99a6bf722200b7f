"""What running Presso's trials through Ray Tune would cost, against Presso's own Ray backend.

The same small study (a 2-layer random llama, ``examples/tiny.yaml``'s space and evaluation,
random sampler, no warm start, no MLflow) runs in a fresh temporary SQLite store per row:

* ``presso-ray``: ``presso run --backend ray`` (``run_study_ray``): a pool of actors, each
  building its :class:`~presso.search.Evaluator` once; the driver asks and tells the store.
* ``tune``: a ``tune.Tuner`` whose function trainable scores a plan with the same Evaluator,
  and a Tune ``Searcher`` whose ``suggest`` / ``on_trial_complete`` call Optuna's ask / tell on
  the study's store (Presso's record format: values, metrics, timings), with
  ``tune.with_resources({"cpu": 1})`` and ``max_concurrent_trials``. The trainable keeps its
  Evaluator in a process-wide cache, so a reused actor (``reuse_actors=True``) skips the model
  load; with ``reuse_actors=False`` (TuneConfig's default) every trial is a new actor process.

Columns: ``wall s`` from before ``ray.init`` to after ``ray.shutdown``; ``first s`` from then to
the first trial stored; ``trial s`` median seconds from ask to tell as the store records it
(``timings.total_s``: scheduling, actor start and model load included when they happen per
trial); ``eval s`` median seconds of the Evaluator's own work; ``builds`` how many times an
Evaluator (model, text, dense references) was built; ``exact`` whether the store holds exactly
``--trials`` finished trials and none RUNNING or WAITING.

    OMP_NUM_THREADS=1 python benchmarks/ray_tune_cost.py [--trials 10] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presso.search import Evaluator, load_existing_study, open_storage, open_study, study_from_dict, suggest, trial_rows  # noqa: E402
from presso.search._driver import failure_reason, tell_failure, tell_outcome  # noqa: E402
from presso.search.ray_backend import run_study_ray  # noqa: E402

STUDY = {
    "model": "tiny:llama", "space": "builtin:tiny", "objectives": ["ppl_ratio", "size_fraction"],
    "sampler": "random", "seed": 0, "warm_start": False, "device": "cpu", "tracking_uri": None,
    "eval": {"sequences": 4, "seq_len": 32},
}


def tune_trainable(config: dict) -> None:
    """One Tune trial: score ``config["plan"]`` with this process's Evaluator (built on first use)."""
    import sys as _sys
    import time as _time
    import types

    from ray import tune

    from presso.plan import plan_from_dict
    from presso.search import Evaluator as _Evaluator
    from presso.search import study_from_dict as _study_from_dict
    from presso.search._driver import failure_reason as _failure_reason

    # NOTE: a module-level global would be pickled with this function (it lives in __main__)
    # and arrive fresh in every trial; sys.modules is what a reused actor process keeps.
    cache = _sys.modules.setdefault("_presso_tune_cache", types.ModuleType("_presso_tune_cache"))
    built = getattr(cache, "key", None) != config["key"]
    if built:
        cache.evaluator = _Evaluator(_study_from_dict(config["study"], base_dir=config["base_dir"]))
        cache.key = config["key"]
    started = _time.perf_counter()
    try:
        outcome = cache.evaluator.evaluate(plan_from_dict(config["plan"]), config["number"])
        payload = {"ok": True, "values": outcome.values, "metrics": outcome.metrics,
                   "timings": outcome.timings, "kernels": outcome.kernels}
    except Exception as exc:  # noqa: BLE001 - the plan fails alone, as on Presso's backends
        payload = {"ok": False, "failure": _failure_reason(exc)}
    tune.report({"payload": json.dumps(payload, default=float), "built": int(built), "pid": os.getpid(),
                 "eval_s": _time.perf_counter() - started})


def make_searcher(study, evaluator, config, trials: int, study_dict: dict, key: str):
    from ray.tune.search import Searcher

    class StoreSearcher(Searcher):
        """Optuna ask in ``suggest``, tell in ``on_trial_complete``, on Presso's SQL store."""

        def __init__(self):
            super().__init__()
            self.asked, self.live = 0, {}

        def suggest(self, trial_id):
            if self.asked >= trials:
                return Searcher.FINISHED
            self.asked += 1
            trial = study.ask()
            plan = suggest(trial, evaluator.bound, model=config.model)
            self.live[trial_id] = (trial, time.perf_counter())
            from presso.plan import plan_to_dict

            return {"plan": plan_to_dict(plan), "number": trial.number, "study": study_dict,
                    "base_dir": config.base_dir, "key": key}

        def on_trial_complete(self, trial_id, result=None, error=False):
            trial, started = self.live.pop(trial_id)
            payload = json.loads(result["payload"]) if result and "payload" in result else None
            if result and "pid" in result:
                trial.set_user_attr("worker", f"pid:{result['pid']}")
                trial.set_user_attr("tune", {"built": result["built"], "eval_s": result["eval_s"]})
            if error or payload is None or not payload["ok"]:
                reason = payload["failure"] if payload else "the Tune trial errored"
                tell_failure(study, trial, reason, started)
                return
            outcome = SimpleNamespace(values=payload["values"], metrics=payload["metrics"],
                                      timings=payload["timings"], kernels=payload["kernels"])
            tell_outcome(study, trial, outcome, evaluator.objective_specs, evaluator.constraints, started)

    return StoreSearcher()


def run_tune(config, trials: int, concurrency: int, reuse: bool, workdir: str) -> dict:
    import ray
    from ray import tune

    ray.init(num_cpus=concurrency, include_dashboard=False, logging_level="WARNING")
    try:
        # The searcher binds the space to the model's module names: it needs one Evaluator here.
        driver_started = time.perf_counter()
        evaluator = Evaluator(config)
        driver_setup_s = time.perf_counter() - driver_started
        storage = open_storage(config.storage, heartbeat_s=config.heartbeat_s, grace_s=config.grace_s)
        study, _ = open_study(config, storage, evaluator)
        study_dict = {**config.to_dict(), "space": evaluator.space_dict, "tracking_uri": None}
        searcher = make_searcher(study, evaluator, config, trials, study_dict, uuid.uuid4().hex)
        tuner = tune.Tuner(
            tune.with_resources(tune_trainable, {"cpu": 1}),
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials,
                                        max_concurrent_trials=concurrency, reuse_actors=reuse),
            run_config=tune.RunConfig(storage_path=workdir, name=config.name, verbose=0),
        )
        grid = tuner.fit()
        tune_results = {"tune_trials": len(grid), "tune_errors": len(grid.errors)}
    finally:
        ray.shutdown()
    return {"driver_setup_s": driver_setup_s, **tune_results}


def measure(row: str, trials: int, concurrency: int, workdir: str) -> dict:
    name = f"rtc-{row}-{uuid.uuid4().hex[:6]}"
    storage = f"sqlite:///{workdir}/{name}.db"
    extra = {"backend": "ray", "max_concurrent": concurrency, "resources": {"cpus": 1}} if row == "presso-ray" else {}
    config = study_from_dict({**STUDY, "name": name, "storage": storage, "trials": trials, **extra}, base_dir=workdir)
    launched, started = datetime.now(), time.perf_counter()
    if row == "presso-ray":
        summary = run_study_ray(config, progress=False)
        info = {"driver_setup_s": 0.0, "tune_trials": None, "tune_errors": None, "ran": summary.ran_here}
    else:
        info = run_tune(config, trials, concurrency, reuse=row == "tune-reuse", workdir=workdir)
    wall = time.perf_counter() - started
    rows = trial_rows(load_existing_study(name, storage))
    finished = [r for r in rows if r.state in ("COMPLETE", "FAIL") and r.counted]
    done = [r.datetime_complete for r in rows if r.datetime_complete]
    if row == "presso-ray":
        builds = len({r.user_attrs.get("worker") for r in finished})  # one Evaluator per actor
    else:
        builds = sum(r.user_attrs.get("tune", {}).get("built", 0) for r in rows)
    return {
        "row": row, "wall_s": wall, "first_s": (min(done) - launched).total_seconds() if done else float("nan"),
        "trial_s": statistics.median(r.timings.get("total_s", float("nan")) for r in finished),
        "eval_s": statistics.median(r.timings.get("compress_s", 0) + r.timings.get("evaluate_s", 0) for r in finished),
        "complete": sum(r.state == "COMPLETE" for r in rows), "failed": sum(r.state == "FAIL" for r in rows),
        "open": sum(r.state in ("RUNNING", "WAITING") for r in rows), "stored": len(rows),
        "exact": len(finished) == len(rows) == trials, "builds": builds,
        "processes": len({r.user_attrs.get("worker") for r in rows}), **info,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rows", nargs="+", default=["presso-ray", "tune", "tune-reuse"],
                        choices=["presso-ray", "tune", "tune-reuse"])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="rtc-") as workdir:
        for row in args.rows:
            results.append(measure(row, args.trials, args.concurrency, workdir))
            print(json.dumps(results[-1], default=str), flush=True)
    print(f"\n{args.trials} trials, {args.concurrency} at a time, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"{'row':<11} {'wall s':>7} {'first s':>8} {'trial s':>8} {'eval s':>7} {'builds':>6} "
          f"{'stored':>6} {'complete':>8} {'open':>4} {'exact':>5}")
    for r in results:
        print(f"{r['row']:<11} {r['wall_s']:7.1f} {r['first_s']:8.1f} {r['trial_s']:8.2f} {r['eval_s']:7.2f} "
              f"{r['builds']:6d} {r['stored']:6d} {r['complete']:8d} {r['open']:4d} {str(r['exact']):>5}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
