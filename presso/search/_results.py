"""Reading a study back: counts, the Pareto front as table/JSON/CSV, and exporting a plan."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

from presso.errors import PressoError
from presso.search._records import objective_names, pareto_rows, trial_rows

_STATES = ("COMPLETE", "FAIL", "RUNNING", "WAITING", "PRUNED")


def status_counts(study) -> dict[str, int]:
    """Trials by state; interrupted and cancelled trials are shown apart from real failures."""
    counts: Counter = Counter()
    for row in trial_rows(study):
        if row.state == "FAIL" and row.failure is None:
            counts["RETRIED"] += 1  # interrupted or lost with its worker; a retry was queued
        elif row.state == "PRUNED" and "cancelled" in row.user_attrs:
            counts["CANCELLED"] += 1
        else:
            counts[row.state] += 1
    return {state: counts[state] for state in (*_STATES, "RETRIED", "CANCELLED") if counts[state]}


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
    return f"{len(layers)} modules, mean {sum(bits) / len(bits):.2f} bits, mean sparsity {sum(sparsity) / len(sparsity):.2f}"


def pareto_table(study, fmt: str = "table") -> str:
    """The front as a rich table (``table``), a JSON list of ``{number, values, plan}`` or CSV."""
    names = objective_names(study)
    front = sorted(pareto_rows(study), key=lambda r: [r.values[n] for n in names])
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
    if fmt != "table":
        raise PressoError(f"format: got {fmt!r}; allowed: table, json, csv")
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
    return console.file.getvalue().rstrip("\n")


def export_plan(study, rule_text: str, output: str, force: bool = False):
    """Pick one trial of the front with ``rule_text`` and write its plan to ``output``.

    Returns:
        ``(row, path)`` of the chosen trial.

    Raises:
        PressoError: the rule does not parse, names an unknown value, or no front trial meets it.
    """
    from presso.objectives import parse_pick_rule
    from presso.plan import plan_from_dict, save_plan

    front = pareto_rows(study)
    if not front:
        raise PressoError(f"export: study {study.study_name!r} has no complete feasible trial yet")
    known = sorted({*objective_names(study), *(k for r in front for k in r.metrics)})
    rule = parse_pick_rule(rule_text, known=known)
    chosen_number, _ = rule.choose([(r.number, r.values | r.metrics) for r in front])
    row = next(r for r in front if r.number == chosen_number)
    plan = plan_from_dict(row.plan)
    save_plan(plan, output, force=force)
    return row, output
