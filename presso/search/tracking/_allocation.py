"""Where a plan spends its bits: a heatmap per plan with the transformer blocks on x and the
module types (``self_attn.q_proj``, ``mlp.down_proj``...) on y, one panel for the bits and one
for the sparsity. Modules outside the blocks (embedding tables) get a column of their own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from presso.search.tracking._summary import _layer_numbers, plan_data

ALLOCATION_DIR = "allocation"
OUTSIDE = "outside blocks"
_BLOCK = re.compile(r"^(?P<prefix>.*?)\.(?P<index>\d+)\.(?P<kind>.+)$")


def allocation_table(plan: Mapping | None) -> tuple[list[str], list[str], dict[tuple[str, str], tuple[float, float]]]:
    """``(columns, module types, {(type, column): (bits, sparsity)})`` of a stored plan.

    Columns are the block numbers in order (``"0"``, ``"1"``...), led by :data:`OUTSIDE` when
    the plan names modules outside the blocks (their type is their full name).

    Example::

        >>> cols, kinds, cells = allocation_table({"layers": {
        ...     "m.layers.0.q": {"quant": {"bits": 4}}, "m.layers.1.q": {"sparsity": {"amount": 0.5}}}})
        >>> cols, kinds, cells[("q", "1")]
        (['0', '1'], ['q'], (16.0, 0.5))
    """
    layers = plan_data(plan).get("layers") or {}
    cells: dict[tuple[str, str], tuple[float, float]] = {}
    kinds: list[str] = []
    blocks: set[int] = set()
    outside = False
    for name, cfg in layers.items():
        if not isinstance(cfg, Mapping):
            continue
        amount, bits, _, _ = _layer_numbers(cfg)
        match = _BLOCK.match(name)
        if match:
            kind, column = match["kind"], match["index"]
            blocks.add(int(column))
        else:
            kind, column, outside = name, OUTSIDE, True
        if kind not in kinds:
            kinds.append(kind)
        cells[(kind, column)] = (bits, amount)
    columns = ([OUTSIDE] if outside else []) + [str(b) for b in sorted(blocks)]
    return columns, kinds, cells


def allocation_figure(plan: Mapping | None, title: str):
    """A matplotlib ``Figure`` (no pyplot) with the bits and sparsity heatmaps of ``plan``."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns, kinds, cells = allocation_table(plan)
    height = max(2.5, 0.32 * len(kinds) + 1.6)
    fig = Figure(figsize=(max(6.0, 0.45 * len(columns) + 4.0), 2 * height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1)
    # (title, value index, colour map, range, whether the low end of the map is dark)
    panels = (("bits (16 = kept)", 0, "viridis", 2.0, 16.0, True),
              ("sparsity (share of weights pruned)", 1, "magma_r", 0.0, 1.0, False))
    for ax, (label, index, cmap, low, high, dark_low) in zip(axes, panels):
        grid = np.full((len(kinds), len(columns)), np.nan)
        for (kind, column), values in cells.items():
            grid[kinds.index(kind), columns.index(column)] = values[index]
        image = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        ax.set_xticks(range(len(columns)), labels=columns, fontsize=7, rotation=90 if OUTSIDE in columns else 0)
        ax.set_yticks(range(len(kinds)), labels=kinds, fontsize=7)
        ax.set_xlabel("block")
        ax.set_ylabel("module type")
        ax.set_title(label, fontsize=9)
        if len(columns) * len(kinds) <= 400:  # values in the cells while they stay legible
            for (kind, column), values in cells.items():
                value = values[index]
                ax.text(columns.index(column), kinds.index(kind), f"{value:g}" if index == 0 else f"{value:.2f}",
                        ha="center", va="center", fontsize=6, color="white" if ((value - low) < 0.5 * (high - low)) == dark_low else "black")
        fig.colorbar(image, ax=ax, label=label.split(" ")[0])
    fig.suptitle(title, fontsize=10)
    return fig


def write_allocation_pngs(folder: Path, rows, front: set[int], limit: int = 24) -> list[Path]:
    """One ``trial_<n>.png`` per front trial whose plan names layers (at most ``limit``, smallest
    numbers first)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    members = [r for r in rows if r.number in front and allocation_table(r.plan)[2]]
    for row in sorted(members, key=lambda r: r.number)[:limit]:
        values = ", ".join(f"{k}={v:.4g}" for k, v in row.values.items())
        path = folder / f"trial_{row.number}.png"
        allocation_figure(row.plan, f"trial {row.number}: {values}").savefig(path, dpi=100)
        written.append(path)
    return written
