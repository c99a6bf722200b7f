"""A progress bar for studies: trials counted, failures, and the Pareto front's size."""

from __future__ import annotations


class StudyProgress:
    def __init__(self, total: int, *, enabled: bool = True, objective_names: list[str] | None = None):
        self.total, self.enabled = total, enabled
        self.names = objective_names or []
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(),
                TextColumn("failed {task.fields[failed]}  front {task.fields[front]}"), TimeElapsedColumn(),
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("trials", total=self.total, failed=0, front=0)
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def update(self, rows, front_size: int) -> None:
        if self._progress is None:
            return
        counted = sum(r.counted for r in rows)
        failed = sum(r.state == "FAIL" and r.counted for r in rows)
        self._progress.update(self._task, completed=min(counted, self.total), failed=failed, front=front_size)

    def update_index(self, index) -> None:
        """Same as :meth:`update`, from a :class:`~presso.search._index.StudyIndex` (no trial is read)."""
        if self._progress is None:
            return
        self._progress.update(self._task, completed=min(index.counted, self.total), failed=index.counted_failed,
                              front=len(index.front))

    def trial_done(self, row) -> None:
        if self._progress is None:
            return
        if row.state == "COMPLETE":
            shown = "  ".join(f"{n}={_fmt(row.values.get(n))}" for n in self.names)
            self._progress.console.print(f"trial {row.number}: {shown}  ({row.timings.get('total_s', 0):.1f} s)")
        elif row.state == "PRUNED" and "low_values" in row.user_attrs:
            low = row.user_attrs["low_values"]
            shown = "  ".join(f"{n}={_fmt(low.get(n))}" for n in self.names)
            self._progress.console.print(f"trial {row.number}: stopped after the short text: {shown}  "
                                         f"({row.timings.get('total_s', 0):.1f} s)")
        else:
            self._progress.console.print(f"trial {row.number}: [red]failed[/red]: {row.failure}")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"
