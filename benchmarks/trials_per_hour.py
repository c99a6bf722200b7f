"""Trials per hour on every executor, side by side: in-process (``presso run``), local worker
processes (``--workers K``) and Ray actors (``--backend ray``, ``max_concurrent: K``, a local
Ray cluster started for the row), on SmolLM2-135M by default.

Each row is a fresh study of ``--trials`` trials in a temporary SQLite store (or ``--storage``);
the rows run one after the other in this one invocation, so they see the same machine. Columns:

* ``wall s``: from starting the workers to the last trial stored (model loading included);
* ``startup s``: from starting the workers to the first trial starting (model load, text,
  dense references, calibration statistics: once per worker);
* ``trials/h wall``: trials over the wall time;
* ``trials/h steady``: trials over the span from the first trial's start to the last one's
  end (what a long study approaches once the workers are up);
* ``trial s``: median seconds of one trial as its worker measured it;
* ``/ in-process``: that median over the in-process row's (when one was measured).

Warm start is off (its sensitivity probes would be charged to one worker) and the sampler is
random, so the rows differ only in the executor and the number of workers. With K workers on C cores each
worker gets ``C // K`` torch threads (``OMP_NUM_THREADS``; ``--threads`` fixes it), so 2 workers
on 2 cores gain only what one thread cannot use (Python, the store, tokenization), not twice
the speed. On a machine shared with other work, 2 threads per worker can be much slower than 1
(OpenMP threads wait for a sibling that is not scheduled): compare with ``--threads 1``.

    python benchmarks/trials_per_hour.py [--trials 6] [--backends local workers ray] [--workers 1 2]
                                         [--threads N] [--model builtin:smollm2-135m]
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from presso.search import load_existing_study, run_study, study_from_dict, trial_rows  # noqa: E402
from presso.search.ray_backend import run_study_ray  # noqa: E402
from presso.search.workers import run_study_workers  # noqa: E402

# executor -> (how its row's study is set up, how it runs)
EXECUTORS = {
    "local": (lambda k: {}, run_study),
    "workers": (lambda k: {"workers": k}, run_study_workers),
    "ray": (lambda k: {"backend": "ray", "max_concurrent": k, "resources": {"cpus": 1}}, run_study_ray),
}


def measure(executor: str, model: str, space: str, workers: int, trials: int, storage: str, eval_cfg: dict) -> dict:
    settings, run = EXECUTORS[executor]
    name = f"tph-{executor}-{workers}-{uuid.uuid4().hex[:6]}"
    config = study_from_dict({
        "name": name, "model": model, "space": space, "trials": trials,
        "sampler": "random", "warm_start": False, "device": "cpu", "storage": storage, "tracking_uri": None,
        "eval": eval_cfg, **settings(workers),
    })
    launched = datetime.now()
    started = time.perf_counter()
    summary = run(config, progress=False)
    wall = time.perf_counter() - started
    rows = [r for r in trial_rows(load_existing_study(name, storage)) if r.counted]
    first = min(r.datetime_start for r in rows)
    span = (max(r.datetime_complete for r in rows) - first).total_seconds()
    return {
        "executor": executor, "workers": workers, "trials": summary.counted, "failed": summary.failed, "wall_s": wall,
        "startup_s": (first - launched).total_seconds(), "span_s": span,
        "per_hour_wall": 3600 * len(rows) / wall, "per_hour_steady": 3600 * len(rows) / span,
        "trial_s": statistics.median(r.timings.get("total_s", float("nan")) for r in rows),
        "processes": len({r.user_attrs.get("worker") for r in rows}),
        "threads": int(os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // workers)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--space", default="builtin:smollm2-135m")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--backends", nargs="+", default=["local", "workers", "ray"], choices=list(EXECUTORS))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="workers / actors per row (not local)")
    parser.add_argument("--sequences", type=int, default=8, help="evaluation sequences per trial")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--storage", help="SQLAlchemy URL (default: a temporary SQLite file)")
    parser.add_argument("--threads", type=int, help="torch threads per worker (default: cores // workers)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # worker processes and Ray actors
        import torch

        torch.set_num_threads(args.threads)  # this process (the in-process row): torch is imported already

    tmp = tempfile.TemporaryDirectory(prefix="presso-tph-")
    storage = args.storage or f"sqlite:///{tmp.name}/studies.db"
    eval_cfg = {"sequences": args.sequences, "seq_len": args.seq_len}
    cores = os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.model}, space {args.space}, {args.trials} trials per row, eval {args.sequences}x{args.seq_len} "
          f"tokens, {cores} CPU cores (load average {load:.1f} at start), CPU torch")
    rows = []
    for executor in args.backends:
        for workers in [1] if executor == "local" else args.workers:
            row = measure(executor, args.model, args.space, workers, args.trials, storage, eval_cfg)
            rows.append(row)
            print(f"  {executor} x{workers}: {row['trials']} trials in {row['wall_s']:.0f} s", flush=True)
    local = next((r["trial_s"] for r in rows if r["executor"] == "local"), None)
    header = (f"{'executor':>8} {'workers':>7} {'threads':>7} {'wall s':>7} {'startup s':>9} {'trials/h wall':>13} "
              f"{'trials/h steady':>15} {'trial s':>8} {'/ in-process':>12}")
    print()
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = f"{r['trial_s'] / local:.2f}" if local else "-"
        print(f"{r['executor']:>8} {r['workers']:>7} {r['threads']:>7} {r['wall_s']:>7.0f} {r['startup_s']:>9.0f} "
              f"{r['per_hour_wall']:>13.0f} {r['per_hour_steady']:>15.0f} {r['trial_s']:>8.2f} {ratio:>12}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nload average at the end: {load:.1f} (the cores are shared with other work: compare rows, "
          "not machines)")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "cores": cores, "rows": rows}, indent=1))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
