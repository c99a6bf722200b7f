"""The parent run's study artifacts: the Pareto front as interactive HTML (plotly) and PNG
(matplotlib, no pyplot state), the front as CSV, the best plan for each objective (YAML) and
each front plan's per-layer allocation (``allocation/trial_<n>.png``, see ``_allocation``).

Every trial is drawn faded, the front highlighted and joined, constraint violators marked
with a red cross. Two objectives give one panel, three or more one panel per pair, one
objective its value against the trial number. A size objective (``size_*``) always goes on
the x axis and quality on y; an axis whose positive values span a factor of
:data:`LOG_RANGE` or more is drawn in log scale, so one outlier (a ppl ratio of 19) does
not squeeze the front into a corner. Front labels are placed so that they do not overlap.
Reference plans (the warm start's uniform plans: user attribute ``seeded: uniform``) are
circled in their own legend entry, so the front can be read against the stock recipes; a
study whose trials are all uniform (the ``uniform`` sampler) has nothing to set them apart
from and draws none.
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import yaml

from presso.search._records import TrialRow
from presso.search.tracking._summary import plan_summary

HTML_NAME = "pareto_front.html"
PNG_NAME = "pareto_front.png"
CSV_NAME = "pareto_front.csv"
BEST_DIR = "best_plans"
_FRONT_COLOR = "#d62728"
_TRIAL_COLOR = "#7f7f7f"
_VIOLATOR_COLOR = "#ff7f0e"
_REFERENCE_COLOR = "#1f77b4"
REFERENCE_LABEL = "uniform plans (reference)"
REFERENCE_SOURCES = ("uniform",)
"""Values of the ``seeded`` trial attribute that mark a reference plan."""
LOG_RANGE = 10.0
"""An axis goes log scale when its values are all positive and max / min reaches this."""


def _plotted(rows: list[TrialRow], names: list[str]) -> list[TrialRow]:
    def finite(row):
        return all(isinstance(row.values.get(n), (int, float)) and math.isfinite(row.values[n]) for n in names)

    return [r for r in rows if r.state == "COMPLETE" and finite(r)]


def references(shown: list[TrialRow]) -> list[TrialRow]:
    """The reference plans among ``shown`` (none when every trial is one)."""
    refs = [r for r in shown if r.user_attrs.get("seeded") in REFERENCE_SOURCES]
    return refs if len(refs) < len(shown) else []


def _label(objective: dict) -> str:
    better = "lower" if objective.get("direction", "minimize") == "minimize" else "higher"
    unit = f" [{objective['unit']}]" if objective.get("unit") else ""
    return f"{objective['name']}{unit} ({better} is better)"


def _is_size(objective: dict) -> bool:
    return str(objective.get("name", "")).startswith("size")


def _panels(objectives: list[dict]) -> list[tuple[dict | None, dict]]:
    """(x, y) objective pairs, size on x when a pair has one; ``x is None`` means the trial number."""
    if len(objectives) == 1:
        return [(None, objectives[0])]
    return [(b, a) if _is_size(b) and not _is_size(a) else (a, b) for a, b in itertools.combinations(objectives, 2)]


def axis_scale(values: list[float]) -> str:
    """``"log"`` when every value is positive and they span a factor of :data:`LOG_RANGE`, else ``"linear"``."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(finite) < 2 or min(finite) <= 0:
        return "linear"
    return "log" if max(finite) / min(finite) >= LOG_RANGE else "linear"


def _place_labels(ax, points: list[tuple[str, float, float]]) -> None:
    """Annotate front points without overlapping labels: each label takes the first of a few
    offsets (right-above, right-below, left-..., then further out with a leader line) whose box
    does not meet a box already placed, in display pixels."""
    fig = ax.figure
    fig.draw_without_rendering()  # final limits and layout, so display coordinates hold
    renderer = fig.canvas.get_renderer()
    # NOTE: later labels do not move the layout (annotations are outside constrained layout's
    # bookkeeping), so boxes measured now stay where they are drawn.
    placed = []
    offsets = [(5, 5), (5, -12), (-5, 5), (-5, -12), (5, 18), (5, -25), (-5, 18), (-5, -25),
               (14, 31), (14, -38), (-14, 31), (-14, -38), (24, 44), (24, -51)]
    for text, x, y in points:
        chosen = None
        for dx, dy in offsets:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                                ha="left" if dx >= 0 else "right",
                                arrowprops=dict(arrowstyle="-", color="0.5", lw=0.5) if abs(dy) > 25 else None)
            box = label.get_window_extent(renderer).expanded(1.05, 1.1)
            if not any(box.overlaps(other) for other in placed):
                chosen = box
                break
            label.remove()
        if chosen is None:  # crowded: the last offset, drawn anyway
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=offsets[-1], fontsize=7,
                                arrowprops=dict(arrowstyle="-", color="0.5", lw=0.5))
            chosen = label.get_window_extent(renderer)
        placed.append(chosen)


def _hover(row: TrialRow, names: list[str]) -> str:
    summary = plan_summary(row.plan)
    lines = [f"trial {row.number}" + ("" if row.feasible else " (violates constraints)")]
    lines += [f"{n} = {row.values[n]:.4g}" for n in names]
    for key in ("sparsity_mean", "bits_mean", "structure", "adapter_rank"):
        if key in summary:
            value = summary[key]
            lines.append(f"{key} = {value:.3g}" if isinstance(value, float) else f"{key} = {value}")
    return "<br>".join(lines)


def _xy(rows, x, y):
    xs = [r.number if x is None else r.values[x["name"]] for r in rows]
    ys = [r.values[y["name"]] for r in rows]
    return xs, ys


def _sorted_front(front_rows, x, y):
    if x is None:
        return sorted(front_rows, key=lambda r: r.number)
    return sorted(front_rows, key=lambda r: (r.values[x["name"]], r.values[y["name"]]))


def write_html(path: Path, title: str, objectives: list[dict], rows: list[TrialRow], front: set[int]) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [o["name"] for o in objectives]
    shown = _plotted(rows, names)
    panels = _panels(objectives)
    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=nrows, cols=cols, horizontal_spacing=0.08, vertical_spacing=0.12)
    groups = {
        "trials": [r for r in shown if r.number not in front and r.feasible],
        "violates constraints": [r for r in shown if not r.feasible],
        REFERENCE_LABEL: references(shown),
        "Pareto front": [r for r in shown if r.number in front],
    }
    styles = {
        REFERENCE_LABEL: dict(mode="markers", marker=dict(color="rgba(0,0,0,0)", symbol="diamond", size=15,
                                                          line=dict(color=_REFERENCE_COLOR, width=2))),
        "trials": dict(mode="markers", marker=dict(color=_TRIAL_COLOR, size=7), opacity=0.35),
        "violates constraints": dict(mode="markers", marker=dict(color=_VIOLATOR_COLOR, symbol="x", size=8), opacity=0.6),
        "Pareto front": dict(
            mode="lines+markers" if len(objectives) <= 2 else "markers",
            marker=dict(color=_FRONT_COLOR, size=10, line=dict(color="black", width=1)),
            line=dict(color=_FRONT_COLOR, shape="hv" if len(objectives) == 2 else "linear", width=1.5),
        ),
    }
    for index, (x, y) in enumerate(panels):
        row, col = index // cols + 1, index % cols + 1
        for group, members in groups.items():
            if group == REFERENCE_LABEL and not members:
                continue
            if group == "Pareto front":
                members = _sorted_front(members, x, y)
            xs, ys = _xy(members, x, y)
            fig.add_trace(
                go.Scatter(x=xs, y=ys, name=group, legendgroup=group, showlegend=index == 0,
                           text=[_hover(r, names) for r in members], hoverinfo="text",
                           customdata=[r.number for r in members], **styles[group]),
                row=row, col=col,
            )
        xs, ys = _xy(shown, x, y)
        fig.update_xaxes(title_text="trial" if x is None else _label(x), row=row, col=col,
                         type="linear" if x is None else axis_scale(xs))
        fig.update_yaxes(title_text=_label(y), row=row, col=col, type=axis_scale(ys))
    fig.update_layout(title=title, template="plotly_white", height=480 * nrows, legend=dict(orientation="h", y=-0.15))
    # NOTE: plotly.js is embedded (about 4.7 MB) because the MLflow UI shows the file in a
    # sandboxed frame and the machines running it may have no internet access for a CDN.
    fig.write_html(path, include_plotlyjs=True, full_html=True)


def pareto_figure(title: str, objectives: list[dict], rows: list[TrialRow], front: set[int]):
    """The matplotlib ``Figure`` behind :data:`PNG_NAME` (no pyplot: no global state, Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [o["name"] for o in objectives]
    shown = _plotted(rows, names)
    panels = _panels(objectives)
    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.4 * cols, 4.8 * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer, to measure label boxes
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    ok = [r for r in shown if r.number not in front and r.feasible]
    bad = [r for r in shown if not r.feasible]
    best = [r for r in shown if r.number in front]
    refs = references(shown)
    labels = []
    for ax, (x, y) in zip(axes, panels):
        all_x, all_y = _xy(shown, x, y)
        if x is not None:
            ax.set_xscale(axis_scale(all_x))
        ax.set_yscale(axis_scale(all_y))
        if ok:
            ax.scatter(*_xy(ok, x, y), s=22, color=_TRIAL_COLOR, alpha=0.35, label="trials")
        if bad:
            ax.scatter(*_xy(bad, x, y), s=30, color=_VIOLATOR_COLOR, alpha=0.6, marker="x", label="violates constraints")
        if refs:  # hollow diamonds around the points: a reference on the front shows both
            ax.scatter(*_xy(refs, x, y), s=110, facecolors="none", edgecolors=_REFERENCE_COLOR, linewidths=1.4,
                       marker="D", zorder=4, label=REFERENCE_LABEL)
        if best:
            ordered = _sorted_front(best, x, y)
            xs, ys = _xy(ordered, x, y)
            if len(objectives) == 2:
                ax.step(xs, ys, where="post", color=_FRONT_COLOR, linewidth=1.2, alpha=0.8)
            ax.scatter(xs, ys, s=50, color=_FRONT_COLOR, edgecolors="black", linewidths=0.6, zorder=3, label="Pareto front")
            labels.append((ax, [(str(r.number), px, py) for r, px, py in zip(ordered, xs, ys)]))
        ax.set_xlabel("trial" if x is None else _label(x))
        ax.set_ylabel(_label(y))
        ax.grid(alpha=0.3, which="both" if ax.get_yscale() == "log" or ax.get_xscale() == "log" else "major")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if shown:
        axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    for ax, points in labels:
        _place_labels(ax, points)
    return fig


def write_png(path: Path, title: str, objectives: list[dict], rows: list[TrialRow], front: set[int]) -> None:
    pareto_figure(title, objectives, rows, front).savefig(path, dpi=100)


def write_csv(path: Path, objectives: list[dict], rows: list[TrialRow], front: set[int], run_ids: dict[int, str] | None = None) -> None:
    names = [o["name"] for o in objectives]
    members = [r for r in rows if r.number in front]
    members.sort(key=lambda r: [r.values.get(n, math.inf) for n in names[:1]] + [r.number])
    metric_keys = sorted({k for r in members for k in r.metrics})
    summary_keys = ["sparsity_mean", "bits_mean", "structure", "adapter_rank", "criterion"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", *names, *metric_keys, *summary_keys, "mlflow_run_id"])
        for r in members:
            summary = plan_summary(r.plan)
            writer.writerow([
                r.number,
                *[r.values.get(n, "") for n in names],
                *[r.metrics.get(k, "") for k in metric_keys],
                *[summary.get(k, "") for k in summary_keys],
                (run_ids or {}).get(r.number, ""),
            ])


def best_rows(objectives: list[dict], rows: list[TrialRow]) -> dict[str, TrialRow]:
    """The feasible complete trial with the best value of each objective (ties: lowest number)."""
    out = {}
    for objective in objectives:
        name, sign = objective["name"], 1.0 if objective.get("direction", "minimize") == "minimize" else -1.0
        candidates = [r for r in _plotted(rows, [name]) if r.feasible and r.plan]
        if candidates:
            out[name] = min(candidates, key=lambda r: (sign * r.values[name], r.number))
    return out


def write_best_plans(folder: Path, objectives: list[dict], rows: list[TrialRow]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, row in best_rows(objectives, rows).items():
        header = f"# best {name}: trial {row.number}, " + ", ".join(f"{k}={v:.6g}" for k, v in row.values.items()) + "\n"
        (folder / f"best_{name}.yaml").write_text(header + yaml.safe_dump(row.plan, sort_keys=False), encoding="utf-8")


def write_study_artifacts(folder: Path, study_name: str, objectives: list[dict], rows: list[TrialRow],
                          front: set[int], run_ids: dict[int, str] | None = None) -> Path:
    """Write every study artifact into ``folder`` (returned) for one ``log_artifacts`` call."""
    folder.mkdir(parents=True, exist_ok=True)
    complete = sum(1 for r in rows if r.state == "COMPLETE")
    title = f"{study_name}: Pareto front ({len(front)} of {complete} complete trials)"
    write_html(folder / HTML_NAME, title, objectives, rows, front)
    write_png(folder / PNG_NAME, title, objectives, rows, front)
    write_csv(folder / CSV_NAME, objectives, rows, front, run_ids)
    write_best_plans(folder / BEST_DIR, objectives, rows)
    from presso.search.tracking._allocation import ALLOCATION_DIR, write_allocation_pngs

    write_allocation_pngs(folder / ALLOCATION_DIR, rows, front)
    return folder


def write_front_pictures(study, folder: Path) -> list[Path]:
    """``presso pareto --plot``: the Pareto PNG and each front plan's allocation heatmap of a
    stored study, written into ``folder``; returns the files written."""
    from presso.search._records import pareto_rows, study_info, trial_rows
    from presso.search.tracking._allocation import ALLOCATION_DIR, write_allocation_pngs

    rows = trial_rows(study)
    front = {r.number for r in pareto_rows(study, rows)}
    objectives = [dict(o) for o in study_info(study).get("objectives") or []]
    if not objectives:
        from presso.errors import PressoError

        raise PressoError(f"pareto --plot: study {study.study_name!r} has no Presso metadata; run it with `presso run`")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    complete = sum(1 for r in rows if r.state == "COMPLETE")
    write_png(folder / PNG_NAME, f"{study.study_name}: Pareto front ({len(front)} of {complete} complete trials)",
              objectives, rows, front)
    return [folder / PNG_NAME, *write_allocation_pngs(folder / ALLOCATION_DIR, rows, front)]
