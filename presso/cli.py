"""The ``presso`` command line.

Every command prints one clear line and exits non-zero on bad input (a ``PressoError``);
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import replace

from presso.errors import PressoError

EXIT_USAGE = 2
_STORE_READERS = ("status", "pareto", "export")


def _quiet_libraries() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _study_config(args):
    from presso.search import StudyConfig, load_study_file

    config = load_study_file(args.study_file) if getattr(args, "study_file", None) else StudyConfig()
    overrides = {
        "name": getattr(args, "study", None),
        "storage": getattr(args, "storage", None),
        "tracking_uri": getattr(args, "tracking_uri", None),
        "sampler": getattr(args, "sampler", None),
        "seed": getattr(args, "seed", None),
        "trials": getattr(args, "trials", None),
        "device": getattr(args, "device", None),
        "model": getattr(args, "model", None),
        "backend": getattr(args, "backend", None),
        "workers": getattr(args, "workers", None),
        "ray_address": getattr(args, "ray_address", None),
    }
    config = config.with_overrides(**overrides)
    # Flags that switch something off (or on) cannot ride on with_overrides, which skips None/False.
    if getattr(args, "no_tracking", False):
        config = replace(config, tracking_uri=None)
    if getattr(args, "trust_remote_code", False):
        config = replace(config, trust_remote_code=True)
    if getattr(args, "warm_start_from", None):
        config = replace(config, warm_start=replace(config.warm_start, from_study=args.warm_start_from))
    return config


def _storage_arg(args) -> str:
    if args.storage:
        return args.storage
    if getattr(args, "study_file", None):
        return _study_config(args).storage
    from presso.search import DEFAULT_STORAGE

    return DEFAULT_STORAGE


def cmd_run(args) -> int:
    from presso.search import run_study

    config = _study_config(args)
    observers = []
    if config.tracking_uri:
        from presso.search.tracking import MlflowTracker

        observers.append(MlflowTracker(config.tracking_uri))
    from presso.search import redact

    print(f"study {config.name!r}: {config.trials} trials on {config.model} with {config.sampler}; "
          f"store {redact(config.storage)}" + (f"; MLflow {redact(config.tracking_uri)}" if config.tracking_uri else ""))
    summary = run_study(config, observers=observers, progress=not args.no_progress)  # executor from config
    state = "interrupted; run the same command again to resume" if summary.interrupted else "done"
    print(f"study {summary.study_name!r} {state}: {summary.counted}/{config.trials} trials "
          f"({summary.complete} complete, {summary.failed} failed), Pareto front of {summary.pareto_size}")
    if not summary.interrupted:
        _print_front(config.name, config.storage, "table")
    return 130 if summary.interrupted else 0


def _print_front(study_name: str, storage: str, fmt: str) -> None:
    from presso.search import check_format, load_existing_study, pareto_table

    check_format(fmt)  # before the store is opened
    study = load_existing_study(study_name, storage)
    print(pareto_table(study, fmt))


def cmd_status(args) -> int:
    from presso.search import StudyIndex, load_existing_study, pareto_table, status_counts, study_info

    storage = _storage_arg(args)
    study = load_existing_study(args.study, storage)
    index = StudyIndex(study).refresh()  # one light read for the counts and the front
    counts = status_counts(study, index)
    info = study_info(study)
    print(f"study {args.study!r}: budget {info.get('trials', '?')} trials, model {info.get('model', '?')}, "
          f"sampler {info.get('sampler', '?')}")
    print("  ".join(f"{state.lower()} {count}" for state, count in counts.items()))
    print(pareto_table(study, "table", index))
    tracking = args.tracking_uri or (_study_config(args).tracking_uri if args.study_file else None)
    from presso.search import DEFAULT_TRACKING, redact

    print(f"MLflow: run `presso ui{' --tracking-uri ' + redact(tracking) if tracking else ''}` and open the link it "
          f"prints for study {args.study!r} (its runs table; store {redact(tracking or DEFAULT_TRACKING)})")
    print(f"Optuna dashboard: optuna-dashboard {redact(storage)}")
    return 0


def cmd_pareto(args) -> int:
    _print_front(args.study, _storage_arg(args), args.format)
    if args.plot:
        from pathlib import Path

        from presso.search import load_existing_study
        from presso.search.tracking import write_front_pictures

        written = write_front_pictures(load_existing_study(args.study, _storage_arg(args)), Path(args.plot))
        print(f"wrote {len(written)} pictures to {args.plot}: {written[0].name} and per-plan allocation heatmaps "
              f"in {written[0].parent.name}/allocation/", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from presso.search import check_pick_rule, export_plan, load_existing_study

    check_pick_rule(args.pick)  # a malformed rule is rejected before the store is opened
    study = load_existing_study(args.study, _storage_arg(args))
    row, path = export_plan(study, args.pick, args.output, force=args.force)
    shown = ", ".join(f"{k}={v:.6g}" for k, v in row.values.items())
    print(f"exported trial {row.number} ({shown}) to {path}")
    return 0


def cmd_apply(args) -> int:
    from presso.plan import load_plan
    from presso.search import apply_plan

    plan = load_plan(args.plan)
    config = _study_config(args) if args.study_file else None
    report = apply_plan(plan, args.out, model=args.model, config=config, force=args.force, device=args.device,
                        target=args.target)
    from presso.targets import size_line

    others = f"; other files (tokenizer, config): {report.other_files_bytes:,} bytes, not counted" \
        if report.other_files_bytes else ""
    print(f"saved {args.out} ({report.target}): {size_line(report.on_disk_bytes, report.dense_bytes, report.size_terms)} "
          f"(predicted {report.predicted_bytes:,}){others}")
    return 0


def cmd_evaluate(args) -> int:
    from presso.search import score_saved

    config = _study_config(args) if args.study_file else None
    scored = score_saved(args.directory, config=config, device=args.device, report=args.report)
    values, reports = scored.values, scored.reports
    if args.format == "json":
        tables = {which: report["table"] for which, report in (reports or {}).items()}
        print(json.dumps({"values": values, "report": tables} if reports else values, indent=1))
        return 0
    width = max(len(k) for k in values)
    for name, value in values.items():
        print(f"{name:<{width}}  {value:.6g}")
    print(f"size: {scored.size}")
    if reports:
        print()
        print(side_by_side(f"compressed ({args.directory})", reports["compressed"]["text"],
                           "uncompressed", reports["uncompressed"]["text"]))
    return 0


def side_by_side(left_title: str, left: str, right_title: str, right: str) -> str:
    """Two text blocks in columns (the classification reports of both models, for comparison)."""
    lefts, rights = [left_title, *left.rstrip().splitlines()], [right_title, *right.rstrip().splitlines()]
    width = max(len(line) for line in lefts) + 4
    rows = max(len(lefts), len(rights))
    lefts += [""] * (rows - len(lefts))
    rights += [""] * (rows - len(rights))
    return "\n".join(f"{a:<{width}}{b}".rstrip() for a, b in zip(lefts, rights))


def cmd_models(args) -> int:
    from presso.models import BUILTIN_MODELS
    from presso.spaces import builtin_spaces

    from presso.models import NEWSGROUPS_TRAINING, newsgroups_metrics

    refs = max(len(spec.ref) for spec in BUILTIN_MODELS.values())
    width = max(len(spec.task) for spec in BUILTIN_MODELS.values())
    indent = " " * (refs + width + 2)
    for spec in BUILTIN_MODELS.values():
        print(f"{spec.ref:<{refs}} {spec.task:<{width}} {spec.description}\n{indent}source: {spec.source}")
        if spec.ref == "builtin:minilm-newsgroups":
            trained = newsgroups_metrics()
            if trained:
                print(f"{indent}test accuracy {trained['test_accuracy']:.4f} on {trained['test_rows']} held-out posts "
                      f"(trained in {trained['train_seconds']:.0f} s on {trained['threads']} CPU threads)")
            else:
                print(f"{indent}not trained yet: the first use fine-tunes it ({NEWSGROUPS_TRAINING['epochs']} epochs "
                      "over 100 posts, a few minutes on a CPU) and caches it")
    print("\nbuilt-in spaces: " + ", ".join(builtin_spaces()))
    print("anything else: a local Hugging Face model folder, or a hub name (needs a network)")
    return 0


def cmd_ui(args) -> int:
    from presso.search import DEFAULT_TRACKING
    from presso.search.tracking import start_ui

    tracking = args.tracking_uri or (_study_config(args).tracking_uri if args.study_file else None) or DEFAULT_TRACKING
    return start_ui(tracking, port=args.port, host=args.host)


def cmd_sync(args) -> int:
    from presso.search import DEFAULT_TRACKING, load_existing_study
    from presso.search.tracking import sync_study

    study = load_existing_study(args.study, _storage_arg(args))
    tracking = args.tracking_uri or (_study_config(args).tracking_uri if args.study_file else None) or DEFAULT_TRACKING
    from presso.search import redact

    result = sync_study(study, tracking)
    print(f"synced study {args.study!r} to {redact(tracking)}: {result}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="presso", description="Search non-uniform compression plans for transformer models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def store_flags(p, study_required=True):
        p.add_argument("--study", required=study_required, help="study name")
        p.add_argument("--storage", help="SQLAlchemy URL of the study store (default: sqlite:///presso-runs/studies.db)")
        p.add_argument("--study-file", help="study YAML (for its storage, tracking and evaluation settings)")
        p.add_argument("--tracking-uri", help="MLflow tracking URI")

    run = sub.add_parser("run", help="run or resume a study")
    run.add_argument("study_file", nargs="?", help="study YAML (default: the built-in SmolLM2 study)")
    run.add_argument("--trials", type=int, help="trial budget")
    run.add_argument("--study", help="study name")
    run.add_argument("--storage", help="SQLAlchemy URL of the study store")
    run.add_argument("--tracking-uri", help="MLflow tracking URI")
    run.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    run.add_argument("--sampler", help="nsga2, evo, tpe, gp, random or uniform")
    run.add_argument("--seed", type=int)
    run.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    run.add_argument("--model", help="model reference (overrides the study file)")
    run.add_argument("--backend", help="local or ray")
    run.add_argument("--workers", type=int, help="local worker processes sharing the store")
    run.add_argument("--ray-address", help="address of an existing Ray cluster")
    run.add_argument("--warm-start-from", metavar="STUDY",
                     help="start a new study from the Pareto front of STUDY (same store unless the study file's "
                          "warm_start.from_storage says otherwise)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--trust-remote-code", action="store_true",
                     help="let a hub or folder model run its own Python code (off unless given)")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="trial counts and the Pareto front")
    store_flags(status)
    status.set_defaults(func=cmd_status)

    pareto = sub.add_parser("pareto", help="the Pareto front")
    store_flags(pareto)
    pareto.add_argument("--format", choices=("table", "json", "csv"), default="table")
    pareto.add_argument("--plot", metavar="DIR",
                        help="also write the Pareto PNG and each front plan's per-layer allocation heatmap to DIR")
    pareto.set_defaults(func=cmd_pareto)

    export = sub.add_parser("export", help="write the plan of one front trial")
    store_flags(export)
    export.add_argument("--pick", required=True, help='rule, e.g. "min size_bytes where ppl_ratio <= 1.10"')
    export.add_argument("-o", "--output", required=True, help="plan file to write (.yaml or .json)")
    export.add_argument("--force", action="store_true", help="overwrite an existing file")
    export.set_defaults(func=cmd_export)

    apply = sub.add_parser("apply", help="compress a model with a plan and save it")
    apply.add_argument("plan", help="plan file (from presso export)")
    apply.add_argument("--out", required=True, help="directory (or .gguf file for --target gguf) to write")
    apply.add_argument("--target", help="file format: gguf | compressed-tensors | presso (default: the study file's, else presso)")
    apply.add_argument("--model", help="model reference (default: the plan's)")
    apply.add_argument("--study-file", help="study YAML whose text settings to use")
    apply.add_argument("--device", default="cpu")
    apply.add_argument("--force", action="store_true", help="replace an existing directory")
    apply.set_defaults(func=cmd_apply)

    evaluate = sub.add_parser("evaluate", help="score a saved compressed model")
    evaluate.add_argument("directory", help="a saved folder, or a .gguf file (scored in llama.cpp)")
    evaluate.add_argument("--study-file", help="study YAML whose objectives and text to use")
    evaluate.add_argument("--format", choices=("table", "json"), default="table")
    evaluate.add_argument("--report", action="store_true",
                          help="also print the classification report, next to the uncompressed model's (task models)")
    evaluate.add_argument("--device", default="cpu")
    evaluate.set_defaults(func=cmd_evaluate)

    models = sub.add_parser("models", help="the built-in offline models")
    models.set_defaults(func=cmd_models)

    ui = sub.add_parser("ui", help="start the MLflow UI over the tracking store")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ui.add_argument("--tracking-uri")
    ui.add_argument("--study-file")
    ui.set_defaults(func=cmd_ui)

    sync = sub.add_parser("sync", help="backfill MLflow from the study store")
    store_flags(sync)
    sync.set_defaults(func=cmd_sync)
    return parser


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command not in _STORE_READERS:  # they never load a model: spare them transformers' import (~1 s)
        _quiet_libraries()
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return args.func(args) or 0
    except PressoError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, unless --debug
        if args.debug:
            raise
        from presso.search import redact

        message = " ".join(str(exc).split())[:300]
        print(f"error: {type(exc).__name__}: {redact(message)} (run `presso --debug ...` for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
