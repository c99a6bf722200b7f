"""The study file: what to search, how, and where results go. CLI flags override its values."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from presso._files import read_data_file
from presso.errors import PressoError, check_keys, did_you_mean

DEFAULT_DIR = "presso-runs"
DEFAULT_STORAGE = f"sqlite:///{DEFAULT_DIR}/studies.db"
DEFAULT_TRACKING = f"sqlite:///{DEFAULT_DIR}/mlflow.db"
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class EvalConfig:
    """Text used to score trials: documents from ``text``, split so calibration and
    evaluation never overlap.

    ``labels`` is the labelled test set of the task objectives (``accuracy``, ``f1_macro``...)
    and of ``probe_accuracy``: a ``.csv`` or ``.jsonl`` file of ``text,label`` rows (sequence
    classification) or a CoNLL-style ``word tag`` file (token classification), relative to
    the study file. ``labels_csv`` is its older spelling.
    """

    text: str = "builtin:lee"
    eval_fraction: float = 0.25
    sequences: int = 8
    seq_len: int = 128
    labels: str | None = None
    labels_csv: str | None = None

    @property
    def labels_file(self) -> str | None:
        return self.labels or self.labels_csv

    def __post_init__(self):
        if self.labels and self.labels_csv:
            raise PressoError(
                f"study.eval: got labels={self.labels!r} and labels_csv={self.labels_csv!r}; allowed: one of them "
                "(labels_csv is the older spelling of labels)"
            )
        for name in ("labels", "labels_csv"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise PressoError(f"study.eval.{name}: got {value!r}; allowed: a path to a labelled file")
        for name, low in (("sequences", 1), ("seq_len", 8)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise PressoError(f"study.eval.{name}: got {value!r}; allowed: an integer >= {low}")
        if not isinstance(self.eval_fraction, (int, float)) or not 0 < self.eval_fraction < 1:
            raise PressoError(f"study.eval.eval_fraction: got {self.eval_fraction!r}; allowed: a fraction in (0, 1)")


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-trial resources (used by the Ray backend)."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self):
        for name in ("cpus", "gpus"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise PressoError(f"study.resources.{name}: got {value!r}; allowed: a number >= 0 (fractions allowed)")


@dataclass(frozen=True)
class WarmStartConfig:
    """Plans enqueued when a study is created, before the sampler takes over (in this order).

    Args:
        from_study: name of an earlier study whose Pareto front seeds this one; its plans are
            mapped onto this study's space (values outside a domain go to the nearest choice).
        from_storage: the earlier study's store (default: this study's ``storage``).
        sensitivity: OWL-style plans: each unit's sensitivity is measured once (quality loss
            when only that unit is compressed hard, on the short text) and bytes are allocated
            inversely to it at a few target sizes.
        sensitivity_plans: how many target sizes get a sensitivity-guided plan (at most
            ``max(2, trials // 5)`` are used); as many again get a per-group plan (each group
            of the space uniform, groups different), duplicates dropped.
        uniform: a few spread-out uniform plans (``trials // 5``), the recipes users try first.

    ``warm_start: true`` in a study file means the defaults; ``false`` turns every source off.
    """

    uniform: bool = True
    sensitivity: bool = True
    sensitivity_plans: int = 8
    from_study: str | None = None
    from_storage: str | None = None

    def __post_init__(self):
        for name in ("uniform", "sensitivity"):
            if not isinstance(getattr(self, name), bool):
                raise PressoError(f"study.warm_start.{name}: got {getattr(self, name)!r}; allowed: true or false")
        value = self.sensitivity_plans
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PressoError(f"study.warm_start.sensitivity_plans: got {value!r}; allowed: an integer >= 1")
        if self.from_study is not None and (not isinstance(self.from_study, str) or not self.from_study.strip()):
            raise PressoError(f"study.warm_start.from_study: got {self.from_study!r}; allowed: a study name")
        if self.from_storage is not None and (not isinstance(self.from_storage, str) or "://" not in self.from_storage):
            raise PressoError(
                f"study.warm_start.from_storage: got {self.from_storage!r}; allowed: an SQLAlchemy URL such as "
                "'sqlite:///presso-runs/studies.db'"
            )

    @property
    def any(self) -> bool:
        return self.uniform or self.sensitivity or self.from_study is not None

    def __bool__(self) -> bool:  # ``if config.warm_start:`` keeps its old meaning
        return self.any


@dataclass(frozen=True)
class FidelityConfig:
    """Multi-fidelity evaluation: a first look on a short text, the full text only for plans that
    could still reach the Pareto front.

    Every non-seeded plan is first scored on the first ``fraction`` of the evaluation sequences.
    It is promoted to the full text unless more than ``max_dominated`` finished trials dominate
    it at that same low fidelity (every finished trial keeps its low-fidelity values, so the
    comparison is like for like). Until ``warmup`` trials have finished, every plan is promoted.
    A plan stopped early is stored as PRUNED with its low-fidelity values in ``low_values``;
    it counts towards the trial budget but never enters the front. Optuna's pruners are
    single-objective, so this rule lives in Presso.

    Args:
        enabled: turn multi-fidelity on (off by default).
        fraction: share of the evaluation sequences in the first look (at least one sequence).
        max_dominated: promote when at most this many finished trials dominate the plan.
        warmup: finished trials needed before any plan is stopped early.
    """

    enabled: bool = False
    fraction: float = 0.25
    max_dominated: int = 2
    warmup: int = 10

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise PressoError(f"study.fidelity.enabled: got {self.enabled!r}; allowed: true or false")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0 < self.fraction < 1:
            raise PressoError(f"study.fidelity.fraction: got {self.fraction!r}; allowed: a fraction in (0, 1)")
        for name in ("max_dominated", "warmup"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise PressoError(f"study.fidelity.{name}: got {value!r}; allowed: an integer >= 0")


def _sub_config(where: str, cls, raw, from_bool):
    """A nested config from a mapping (unknown keys rejected) or a bool (``from_bool``), or
    returned as is when it already is one."""
    if isinstance(raw, cls):
        return raw
    names = [f.name for f in fields(cls)]
    if isinstance(raw, bool):
        return from_bool(raw)
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise PressoError(f"{where}: got {raw!r}; allowed: true, false or a mapping with keys {', '.join(names)}")
    check_keys(where, raw, names)
    return cls(**raw)


@dataclass(frozen=True)
class StudyConfig:
    """A study, as written in the study YAML file.

    Example::

        name: smollm2-demo
        model: builtin:smollm2-135m
        space: builtin:smollm2-135m
        objectives: [ppl_ratio, size_fraction]
        constraints: ["ppl_ratio <= 2.0"]
        trials: 30
        warm_start:                  # or true (the defaults) / false (none)
          uniform: true              # a few spread-out uniform plans
          sensitivity: true          # OWL-style plans from per-unit sensitivity (measured once)
          from_study: null           # an earlier study whose front seeds this one
        fidelity:                    # or true / false
          enabled: false             # short text first; full text only for promising plans
          fraction: 0.25
          max_dominated: 2
    """

    name: str = "presso-study"
    model: str = "builtin:smollm2-135m"
    space: object = "builtin:smollm2-135m"  # a builtin:, a path, or an inline mapping
    objectives: tuple[str, ...] = ("ppl_ratio", "size_fraction")
    constraints: tuple[str, ...] = ()
    sampler: str = "evo"
    target: str = "presso"  # the file format the search works in and `presso apply` writes
    trials: int = 30
    seed: int = 0
    device: str = "auto"
    storage: str = DEFAULT_STORAGE
    tracking_uri: str | None = DEFAULT_TRACKING
    eval: EvalConfig = field(default_factory=EvalConfig)
    backend: str = "local"
    workers: int = 1
    ray_address: str | None = None
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    max_concurrent: int = 2
    heartbeat_s: int = 10
    grace_s: int = 30
    trust_remote_code: bool = False
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)  # or true / false
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    base_dir: str = "."  # where relative paths in the file are resolved; not a user key

    def __post_init__(self):
        from presso.plugins import load_plugins

        load_plugins()  # once per process: plugin samplers, objectives and targets are then registered
        if not isinstance(self.name, str) or not self.name.strip():
            raise PressoError(f"study.name: got {self.name!r}; allowed: a non-empty string")
        if not isinstance(self.model, str) or not self.model:
            raise PressoError(f"study.model: got {self.model!r}; allowed: a model reference such as 'builtin:smollm2-135m'")
        objectives = self.objectives
        if isinstance(objectives, str):
            objectives = (objectives,)
        if not objectives or not all(isinstance(o, str) for o in objectives):
            raise PressoError(f"study.objectives: got {self.objectives!r}; allowed: a non-empty list of objective names")
        if len(set(objectives)) != len(objectives):
            raise PressoError(f"study.objectives: each objective may appear once, got {list(objectives)!r}")
        from presso.objectives import registered_objectives  # the registry only: no torch

        known = registered_objectives()
        for name in objectives:
            if name not in known:
                raise PressoError(f"study.objectives: got {name!r}{did_you_mean(name, known)}; "
                                  f"registered objectives: {', '.join(known)}")
        object.__setattr__(self, "objectives", tuple(objectives))
        constraints = self.constraints or ()
        if isinstance(constraints, str):
            constraints = (constraints,)
        object.__setattr__(self, "constraints", tuple(constraints))
        # The sampler registry is the allowlist, so a registered plugin sampler is accepted here.
        from presso.search._samplers import sampler_names

        if self.sampler not in sampler_names():
            raise PressoError(f"study.sampler: got {self.sampler!r}{did_you_mean(str(self.sampler), sampler_names())}; "
                              f"allowed: {sampler_names()}")
        from presso.targets import target_names

        if self.target not in target_names():
            raise PressoError(f"study.target: got {self.target!r}{did_you_mean(str(self.target), target_names())}; "
                              f"allowed: {target_names()}")
        if self.backend not in BACKENDS:
            raise PressoError(f"study.backend: got {self.backend!r}{did_you_mean(self.backend, BACKENDS)}; allowed: {list(BACKENDS)}")
        for name, low in (("trials", 1), ("workers", 1), ("max_concurrent", 1), ("heartbeat_s", 1), ("grace_s", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise PressoError(f"study.{name}: got {value!r}; allowed: an integer >= {low}")
        if self.grace_s <= self.heartbeat_s:
            raise PressoError(f"study.grace_s: got {self.grace_s!r}; it must exceed heartbeat_s ({self.heartbeat_s})")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise PressoError(f"study.seed: got {self.seed!r}; allowed: an integer")
        object.__setattr__(self, "warm_start", _sub_config(
            "study.warm_start", WarmStartConfig, self.warm_start,
            lambda on: WarmStartConfig() if on else WarmStartConfig(uniform=False, sensitivity=False)))
        object.__setattr__(self, "fidelity", _sub_config(
            "study.fidelity", FidelityConfig, self.fidelity, lambda on: FidelityConfig(enabled=on)))
        if not isinstance(self.storage, str) or "://" not in self.storage:
            raise PressoError(
                f"study.storage: got {self.storage!r}; allowed: an SQLAlchemy URL such as 'sqlite:///presso.db' "
                "or 'postgresql+psycopg://user@host/db'"
            )

    @property
    def directory(self) -> Path:
        return Path(self.base_dir)

    def resolve_path(self, value: str) -> str:
        """Paths in the study file are relative to the file's folder."""
        if value.startswith(("builtin:", "tiny:")) or os.path.isabs(value):
            return value
        candidate = self.directory / value
        return str(candidate) if candidate.exists() else value

    def with_overrides(self, **overrides) -> StudyConfig:
        """A copy with the non-None values of ``overrides`` (from CLI flags) applied."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("base_dir")
        data["objectives"] = list(self.objectives)
        data["constraints"] = list(self.constraints)
        return data


_KEYS = [f.name for f in fields(StudyConfig) if f.name != "base_dir"]


def study_from_dict(data, base_dir: str = ".") -> StudyConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PressoError(f"study: got {type(data).__name__}; allowed: a mapping with keys {', '.join(_KEYS)}")
    check_keys("study", data, _KEYS)
    data = dict(data)
    if "eval" in data:
        raw = data["eval"] or {}
        if not isinstance(raw, dict):
            raise PressoError(f"study.eval: got {raw!r}; allowed: a mapping with keys {', '.join(f.name for f in fields(EvalConfig))}")
        check_keys("study.eval", raw, [f.name for f in fields(EvalConfig)])
        data["eval"] = EvalConfig(**raw)
    if "resources" in data:
        raw = data["resources"] or {}
        if not isinstance(raw, dict):
            raise PressoError(f"study.resources: got {raw!r}; allowed: a mapping with keys cpus, gpus")
        check_keys("study.resources", raw, ["cpus", "gpus"])
        data["resources"] = ResourcesConfig(**raw)
    return StudyConfig(base_dir=base_dir, **data)


def load_study_file(path: str | os.PathLike) -> StudyConfig:
    """Parse a study YAML file (``safe_load`` only)."""
    path = Path(path)
    data = read_data_file(path, "study file")
    return study_from_dict(data, base_dir=str(path.parent))
