"""Sampler registry: name -> factory. ``uniform`` walks the uniform plans of the space
(enqueued as trials) and then falls back to random sampling; ``evo`` is a local search around
the Pareto front (``presso.search._evolution``)."""

from __future__ import annotations

from collections.abc import Callable

from presso.errors import PressoError, did_you_mean

SamplerFactory = Callable[[int, int], object]  # (seed, n_objectives) -> optuna sampler
_SAMPLERS: dict[str, SamplerFactory] = {}


def register_sampler(name: str):
    """Decorator: register ``factory(seed, n_objectives) -> optuna sampler`` under ``name``.

    The registry is the allowlist of ``study.sampler``; a name registers once.

    Example::

        @register_sampler("qmc")
        def _qmc(seed, n_objectives):
            import optuna

            return optuna.samplers.QMCSampler(seed=seed)
    """
    if not isinstance(name, str) or not name:
        raise PressoError(f"register_sampler: got name {name!r}; allowed: a non-empty string")

    def decorate(factory: SamplerFactory) -> SamplerFactory:
        if name in _SAMPLERS:
            raise ValueError(f"sampler {name!r} is already registered")
        _SAMPLERS[name] = factory
        return factory

    return decorate


def make_sampler(name: str, seed: int, n_objectives: int):
    if name not in _SAMPLERS:
        raise PressoError(f"sampler: got {name!r}{did_you_mean(name, _SAMPLERS)}; allowed: {sorted(_SAMPLERS)}")
    return _SAMPLERS[name](seed, n_objectives)


def sampler_names() -> list[str]:
    """The registered sampler names, sorted."""
    return sorted(_SAMPLERS)


def unregister_sampler(name: str) -> None:
    """Remove ``name`` from the registry (for tests and plugin reloads)."""
    if name not in _SAMPLERS:
        raise PressoError(f"sampler: got {name!r}{did_you_mean(name, _SAMPLERS)}; allowed: {sorted(_SAMPLERS)}")
    del _SAMPLERS[name]


@register_sampler("nsga2")
def _nsga2(seed, n_objectives):
    import optuna

    # Small populations: a study here runs tens of trials, not thousands.
    return optuna.samplers.NSGAIISampler(population_size=10, seed=seed)


@register_sampler("tpe")
def _tpe(seed, n_objectives):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)


@register_sampler("gp")
def _gp(seed, n_objectives):
    import optuna

    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)


@register_sampler("random")
def _random(seed, n_objectives):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@register_sampler("uniform")
def _uniform(seed, n_objectives):
    import optuna

    # The uniform plans themselves are enqueued by the driver; this samples past the grid.
    return optuna.samplers.RandomSampler(seed=seed)


@register_sampler("evo")
def _evo(seed, n_objectives):
    from presso.search._evolution import LocalSearchSampler

    # EvoPress-style local search around the front; the warm-start plans are its first parents.
    return LocalSearchSampler(seed=seed, n_startup_trials=5)
