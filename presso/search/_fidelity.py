"""Multi-fidelity promotion for several objectives (Optuna's pruners are single-objective).

A plan is first scored on a short text. It is promoted to the full text unless more than
``max_dominated`` finished trials dominate it at that same low fidelity: every trial that ran
with multi-fidelity on keeps its low-fidelity values (``low_values``), so the comparison is
between measurements of the same kind and the same noise. A plan several finished plans beat on
every objective at low fidelity is unlikely to reach the front at full fidelity; ``max_dominated``
is the slack for the noise of the short text. This is successive halving with two rungs where
"top fraction" is replaced by "dominated by at most k" (multi-objective).
"""

from __future__ import annotations


class Promoter:
    """Decides, from a plan's low-fidelity values, whether to measure it on the full text.

    Args:
        study: the Optuna study (its COMPLETE trials with ``low_values`` are the reference).
        fidelity: the study's :class:`~presso.search.FidelityConfig`.
        objective_specs: the objectives (names and directions).
    """

    def __init__(self, study, fidelity, objective_specs):
        self.study, self.fidelity = study, fidelity
        self.names = [s.name for s in objective_specs]
        self.directions = [s.direction for s in objective_specs]
        self.decision: dict = {}

    def reference_points(self) -> list[list[float]]:
        import optuna

        points = []
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            low = trial.user_attrs.get("low_values")
            if low and all(n in low for n in self.names):
                points.append([float(low[n]) for n in self.names])
        return points

    def __call__(self, low_values: dict[str, float]) -> bool:
        from presso.objectives import dominates

        point = [low_values[n] for n in self.names]
        reference = self.reference_points()
        dominated = sum(dominates(other, point, self.directions) for other in reference)
        warming_up = len(reference) < self.fidelity.warmup
        promoted = warming_up or dominated <= self.fidelity.max_dominated
        self.decision = {"dominated_by": dominated, "compared_with": len(reference),
                         "max_dominated": self.fidelity.max_dominated, "warmup": warming_up, "promoted": promoted}
        return promoted


def always(_low_values) -> bool:
    """Seeded plans are always promoted (they anchor the low-fidelity comparison)."""
    return True
