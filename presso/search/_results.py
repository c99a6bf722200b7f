"""Reading a study back: counts, the Pareto front as table/JSON/CSV, and exporting a plan.

Each answer reads values and states first (:class:`~presso.search._index.StudyIndex`), then
the details of the few front trials only; arguments are checked before the store is read
(:func:`check_format`, :func:`check_pick_rule`), so a typo costs nothing on a large study."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

from presso.errors import PressoError
from presso.search._index import StudyIndex, full_rows
from presso.search._records import objective_names, size_note, study_info

_STATES = ("COMPLETE", "FAIL", "RUNNING", "WAITING", "PRUNED")
FORMATS = ("table", "json", "csv")


def check_format(fmt: str) -> None:
    """Raise unless ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise PressoError(f"format: got {fmt!r}; allowed: {', '.join(FORMATS)}")


def check_pick_rule(rule_text: str) -> None:
    """Check a pick rule against every name a study can record (registered objectives and the
    evaluator's metrics) before any store is opened; the study's own names are checked again
    once it is read."""
    from presso.objectives import parse_pick_rule, registered_objectives
    from presso.search._evaluator import METRIC_NAMES

    parse_pick_rule(rule_text, known=[*registered_objectives(), *METRIC_NAMES])


def status_counts(study, index: StudyIndex | None = None) -> dict[str, int]:
    """Trials by state; interrupted and cancelled trials are shown apart from real failures."""
    counts = (index or StudyIndex(study).refresh()).counts()
    return {state: counts[state] for state in (*_STATES, "RETRIED", "CANCELLED") if counts[state]}


def front_rows(study, index: StudyIndex | None = None) -> list:
    """The feasible Pareto front with its details (metrics, plans on demand), by objective values."""
    index = index or StudyIndex(study).refresh()
    names = objective_names(study)
    return sorted(full_rows(study, index.front), key=lambda r: [r.values[n] for n in names])


def _plan_summary(plan: dict | None) -> str:
    if not plan:
        return "-"
    layers = plan.get("_data", {}).get("layers", {})
    if not layers:
        return "dense"
    formats = Counter(cfg["quant"]["format"] for cfg in layers.values() if cfg["quant"].get("format"))
    if formats:
        return f"{len(layers)} modules: " + ", ".join(f"{n} {name}" for name, n in formats.most_common())
    bits = [cfg["quant"]["bits"] for cfg in layers.values()]
    sparsity = [cfg["sparsity"]["amount"] for cfg in layers.values()]
    text = f"{len(layers)} modules, mean {sum(bits) / len(bits):.2f} bits, mean sparsity {sum(sparsity) / len(sparsity):.2f}"
    # Which quantizer the quantized layers use (a stored plan omits method at its default, rtn).
    methods = Counter(cfg["quant"].get("method", "rtn") for cfg in layers.values() if cfg["quant"]["bits"] < 16)
    if set(methods) - {"rtn"}:
        text += ", " + ", ".join(f"{n} {name}" for name, n in methods.most_common())
    return text


def pareto_table(study, fmt: str = "table", index: StudyIndex | None = None) -> str:
    """The front as a rich table (``table``), a JSON list of ``{number, values, plan}`` or CSV."""
    check_format(fmt)
    names = objective_names(study)
    front = front_rows(study, index)
    if fmt == "json":
        return json.dumps(
            [{"number": r.number, "values": r.values, "metrics": r.metrics, "plan": r.plan} for r in front], indent=1
        )
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        metric_names = sorted({k for r in front for k in r.metrics})
        writer.writerow(["number", *names, *metric_names])
        for r in front:
            writer.writerow([r.number, *(r.values[n] for n in names), *(r.metrics.get(m, "") for m in metric_names)])
        return out.getvalue().rstrip("\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Pareto front ({len(front)} trials)")
    table.add_column("trial", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("plan")
    for r in front:
        table.add_row(str(r.number), *(f"{r.values[n]:.5g}" for n in names), _plan_summary(r.plan))
    console = Console(file=io.StringIO(), width=140, force_terminal=False)
    console.print(table)
    note = size_note(study_info(study), front) if any(n.startswith("size") for n in names) else None
    return console.file.getvalue().rstrip("\n") + (f"\n{note}" if note else "")


def export_plan(study, rule_text: str, output: str, force: bool = False):
    """Pick one trial of the front with ``rule_text`` and write its plan to ``output``.

    Returns:
        ``(row, path)`` of the chosen trial.

    Raises:
        PressoError: the rule does not parse, names an unknown value, or no front trial meets it.
    """
    from presso.objectives import parse_pick_rule
    from presso.plan import plan_from_dict, save_plan

    check_pick_rule(rule_text)
    front = front_rows(study)
    if not front:
        raise PressoError(f"export: study {study.study_name!r} has no complete feasible trial yet")
    known = sorted({*objective_names(study), *(k for r in front for k in r.metrics)})
    rule = parse_pick_rule(rule_text, known=known)
    chosen_number, _ = rule.choose([(r.number, r.values | r.metrics) for r in front])
    row = next(r for r in front if r.number == chosen_number)
    plan = plan_from_dict(row.plan)
    save_plan(plan, output, force=force)
    return row, output
