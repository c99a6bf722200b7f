"""Declared search spaces: YAML -> :class:`SearchSpace` -> bound to a model's module names ->
plans, sampled define-by-run through an ``ask(name, domain)`` callback.

A space file::

    defaults: {criterion: wanda}          # global plan settings (optional)
    groups:
      - name: attn
        modules: ["model.layers.*.self_attn.*_proj"]   # glob, or "re:<regex>"
        tie: block                       # module | block | group
        blocks_per_unit: 5               # with tie: block, blocks 0-4 share a choice, 5-9 the next...
        sparsity: {low: 0.0, high: 0.6, step: 0.1}
        structure: unstructured          # or a list such as [unstructured, "2:4"]
        bits: [4, 8, 16]
        group_size: [32, 64]             # asked only when bits < 16
        symmetric: false
        method: [rtn, gptq]              # quantizer (presso.plan.quant_methods()); asked only when bits < 16
        rank: 0                          # LoRA rank; a list such as [0, 8] to search it

A scalar is a fixed value, a list a choice, a mapping with ``low``/``high`` a range. A module
that several groups match belongs to the first of them. Parameter names are stable paths
``"<group>/<unit>/<key>"`` such as ``"attn/blocks0-4/bits"``: Optuna refuses a changed
distribution under one name, so names never depend on sampling order.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from presso._files import read_data_file
from presso.errors import PressoError, check_keys, did_you_mean
from presso.plan import (
    KEEP_BITS,
    AdapterConfig,
    LayerConfig,
    Plan,
    QuantConfig,
    RecoveryConfig,
    SparsityConfig,
    parse_structure,
    section_from_dict,
)
from presso.spaces._domains import Choice, Domain, FloatRange, Fixed, IntRange, nearest_value

TIES = ("module", "block", "group")
CHOICE_KEYS = ("sparsity", "structure", "bits", "group_size", "symmetric", "method", "format", "rank")
GROUP_KEYS = ("name", "modules", "exclude", "tie", "blocks_per_unit", *CHOICE_KEYS)
DEFAULT_KEYS = ("criterion", "calibration_samples", "calibration_seq_len", "recovery", "seed")
SPACE_KEYS = ("name", "description", "model", "defaults", "groups")
_BLOCK_INDEX = re.compile(r"\.(\d+)\.")

Ask = Callable[[str, Domain], object]


def _domain(where: str, raw, *, integer: bool) -> Domain:
    if isinstance(raw, dict):
        check_keys(where, raw, ["low", "high", "step", "log"])
        if "low" not in raw or "high" not in raw:
            raise PressoError(f"{where}: a range needs both 'low' and 'high', got {raw!r}")
        try:
            if integer:
                return IntRange(int(raw["low"]), int(raw["high"]), int(raw.get("step", 1)), bool(raw.get("log", False)))
            return FloatRange(float(raw["low"]), float(raw["high"]), raw.get("step"), bool(raw.get("log", False)))
        except PressoError as exc:
            raise PressoError(f"{where}: {exc}") from None
        except (TypeError, ValueError):
            raise PressoError(f"{where}: range bounds must be numbers, got {raw!r}") from None
    if isinstance(raw, list):
        try:
            return Choice(tuple(raw))
        except PressoError as exc:
            raise PressoError(f"{where}: {exc}") from None
    return Fixed(raw)


def _check_values(where: str, domain: Domain, check: Callable[[object], None]) -> None:
    """Validate every value a domain can produce (ranges: both ends)."""
    values = [domain.low, domain.high] if isinstance(domain, (FloatRange, IntRange)) else domain.grid()
    for value in values:
        try:
            check(value)
        except PressoError as exc:
            raise PressoError(f"{where}: {exc}") from None


# Choice keys added after studies were first stored; left at their defaults they are omitted from
# ``to_dict``, so a study stored before them resumes with the same space.
_LATER_KEYS = {"method": Fixed("rtn"), "format": Fixed(None)}


@dataclass(frozen=True)
class Group:
    name: str
    modules: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    tie: str = "block"
    blocks_per_unit: int = 1
    sparsity: Domain = Fixed(0.0)
    structure: Domain = Fixed("unstructured")
    bits: Domain = Fixed(KEEP_BITS)
    group_size: Domain = Fixed(0)
    symmetric: Domain = Fixed(False)
    method: Domain = Fixed("rtn")
    format: Domain = Fixed(None)  # ggml formats (gguf target): replaces bits/group_size/symmetric
    rank: Domain = Fixed(0)

    @staticmethod
    def from_dict(data, index: int) -> Group:
        where = f"space.groups[{index}]"
        if not isinstance(data, dict):
            raise PressoError(f"{where}: got {data!r}; allowed: a mapping with keys {', '.join(GROUP_KEYS)}")
        check_keys(where, data, GROUP_KEYS)
        name = data.get("name", f"group{index}")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise PressoError(f"{where}.name: got {name!r}; allowed: letters, digits, '_', '.', '-'")
        where = f"space.groups[{name!r}]"
        modules = data.get("modules")
        if isinstance(modules, str):
            modules = [modules]
        if not modules or not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
            raise PressoError(f"{where}.modules: got {modules!r}; allowed: a non-empty list of globs or 're:<regex>' patterns")
        exclude = data.get("exclude") or []
        if isinstance(exclude, str):
            exclude = [exclude]
        for pattern in [*modules, *exclude]:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise PressoError(f"{where}.modules: {pattern!r} is not a valid regex ({exc})") from None
        tie = data.get("tie", "block")
        if tie not in TIES:
            raise PressoError(f"{where}.tie: got {tie!r}{did_you_mean(tie, TIES)}; allowed: {list(TIES)}")
        span = data.get("blocks_per_unit", 1)
        if not isinstance(span, int) or isinstance(span, bool) or span < 1:
            raise PressoError(f"{where}.blocks_per_unit: got {span!r}; allowed: an integer >= 1")
        domains = {}
        for key in CHOICE_KEYS:
            if key in data:
                domains[key] = _domain(f"{where}.{key}", data[key], integer=key in ("bits", "group_size", "rank"))
        group = Group(name=name, modules=tuple(modules), exclude=tuple(exclude), tie=tie, blocks_per_unit=span, **domains)
        group._validate(where)
        return group

    def _validate(self, where: str) -> None:
        _check_values(f"{where}.sparsity", self.sparsity, lambda v: SparsityConfig(amount=v))
        _check_values(f"{where}.structure", self.structure, parse_structure)
        _check_values(f"{where}.bits", self.bits, lambda v: QuantConfig(bits=v))
        _check_values(f"{where}.group_size", self.group_size, lambda v: QuantConfig(group_size=v))
        _check_values(f"{where}.symmetric", self.symmetric, lambda v: QuantConfig(symmetric=v))
        _check_values(f"{where}.format", self.format, lambda v: QuantConfig(format=v))
        _check_values(f"{where}.method", self.method, lambda v: QuantConfig(method=v))
        if isinstance(self.method, (FloatRange, IntRange)):
            raise PressoError(f"{where}.method: got a range; allowed: a method name or a list of them")
        _check_values(f"{where}.rank", self.rank, lambda v: AdapterConfig(rank=v))
        if not (isinstance(self.format, Fixed) and self.format.value is None) and not (
                isinstance(self.bits, Fixed) and self.bits.value == KEEP_BITS):
            raise PressoError(f"{where}: format and bits are alternatives; allowed: a format list OR bits/group_size")
        if not (isinstance(self.format, Fixed) and self.format.value is None):
            for method in self.method.grid():  # each method must round inside each offered format
                _check_values(f"{where}.format", self.format, lambda v: QuantConfig(format=v, method=method))
        if isinstance(self.bits, (FloatRange,)) or isinstance(self.structure, (FloatRange, IntRange)):
            raise PressoError(f"{where}: bits and structure take a list or a fixed value, not a range")

    def matches(self, module_name: str) -> bool:
        return _matches_any(self.modules, module_name) and not _matches_any(self.exclude, module_name)


def _matches_any(patterns: Sequence[str], name: str) -> bool:
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.fullmatch(pattern[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


@dataclass(frozen=True)
class Unit:
    """Modules that share one set of choices."""

    group: Group
    unit_id: str
    modules: tuple[str, ...]

    def param(self, key: str) -> str:
        return f"{self.group.name}/{self.unit_id}/{key}"


@dataclass(frozen=True)
class SearchSpace:
    groups: tuple[Group, ...]
    defaults: dict = field(default_factory=dict)
    name: str = "space"
    model: str | None = None
    description: str = ""

    @staticmethod
    def from_dict(data) -> SearchSpace:
        if not isinstance(data, dict):
            raise PressoError(f"space: got {type(data).__name__}; allowed: a mapping with keys {', '.join(SPACE_KEYS)}")
        check_keys("space", data, SPACE_KEYS)
        raw_groups = data.get("groups")
        if not isinstance(raw_groups, list) or not raw_groups:
            raise PressoError(f"space.groups: got {raw_groups!r}; allowed: a non-empty list of groups")
        groups = tuple(Group.from_dict(g, i) for i, g in enumerate(raw_groups))
        names = [g.name for g in groups]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PressoError(f"space.groups: group names must be unique, {duplicates[0]!r} appears twice")
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise PressoError(f"space.defaults: got {defaults!r}; allowed: a mapping with keys {', '.join(DEFAULT_KEYS)}")
        check_keys("space.defaults", defaults, DEFAULT_KEYS)
        space = SearchSpace(groups=groups, defaults=dict(defaults), name=str(data.get("name", "space")),
                            model=data.get("model"), description=str(data.get("description", "")))
        space.base_plan(layers={})  # validates the defaults now, not at the first trial
        return space

    def to_dict(self) -> dict:
        def raw(domain: Domain):
            if isinstance(domain, Fixed):
                return domain.value
            if isinstance(domain, Choice):
                return list(domain.values)
            out = {"low": domain.low, "high": domain.high}
            if domain.step not in (None, 1) or isinstance(domain, FloatRange) and domain.step is not None:
                out["step"] = domain.step
            if domain.log:
                out["log"] = True
            return out

        groups = []
        for g in self.groups:
            entry = {"name": g.name, "modules": list(g.modules)}
            if g.exclude:
                entry["exclude"] = list(g.exclude)
            entry.update(tie=g.tie, blocks_per_unit=g.blocks_per_unit)
            entry.update({key: raw(getattr(g, key)) for key in CHOICE_KEYS
                          if not (key in _LATER_KEYS and getattr(g, key) == _LATER_KEYS[key])})
            groups.append(entry)
        out = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.model:
            out["model"] = self.model
        out["defaults"] = dict(self.defaults)
        out["groups"] = groups
        return out

    def base_plan(self, layers: dict[str, LayerConfig], model: str | None = None) -> Plan:
        kwargs = {k: v for k, v in self.defaults.items() if k != "recovery"}
        recovery = section_from_dict(RecoveryConfig, self.defaults.get("recovery"), "space.defaults.recovery")
        try:
            return Plan(layers=layers, model=model or self.model, recovery=recovery, **kwargs)
        except PressoError as exc:
            raise PressoError(f"space.defaults: {exc}") from None

    def bind(self, module_names: Sequence[str], exact_names: Sequence[str] = ()) -> BoundSpace:
        """Resolve the groups against a model's compressible module names.

        ``exact_names`` (the embedding tables) join a group only when one of its ``modules``
        entries is exactly that name, so catch-all patterns keep meaning the block Linears.

        Raises:
            PressoError: a group matches no module (the message lists a few real names).
        """
        exact = list(exact_names)
        names = [*exact, *module_names]
        exact_set = set(exact)
        owner = {n: module_group(self, n, exact_set) for n in names}
        units: list[Unit] = []
        for group in self.groups:
            members = [n for n in names if owner[n] == group.name]
            if not members:
                shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
                raise PressoError(
                    f"space.groups[{group.name!r}].modules: {list(group.modules)!r} matches no module; "
                    f"the model's modules look like: {shown}"
                )
            units.extend(_units(group, members))
        return BoundSpace(space=self, units=tuple(units), module_names=tuple(names))


def module_group(space: SearchSpace, module_name: str, exact_names: Collection[str] = ()) -> str | None:
    """The name of the group of ``space`` that owns ``module_name``, or None when none does.

    The one rule binding and tracking share: groups are tried in order and the first that claims
    the module wins. A module listed in ``exact_names`` (an embedding table) is claimed only by a
    group whose ``modules`` names it exactly; any other module by a group whose patterns match it
    and whose ``exclude`` patterns do not.

    Example::

        >>> space = SearchSpace.from_dict({"groups": [
        ...     {"name": "all", "modules": ["re:.*"], "bits": [4, 8]},
        ...     {"name": "embed", "modules": ["model.embed_tokens"], "bits": [8, 16]}]})
        >>> module_group(space, "model.embed_tokens", ["model.embed_tokens"])
        'embed'
        >>> module_group(space, "model.layers.0.mlp.up_proj", ["model.embed_tokens"])
        'all'
    """
    exact = module_name in exact_names
    for group in space.groups:
        if (module_name in group.modules) if exact else group.matches(module_name):
            return group.name
    return None


def _units(group: Group, members: list[str]) -> list[Unit]:
    if group.tie == "group":
        return [Unit(group, "all", tuple(members))]
    if group.tie == "module":
        return [Unit(group, name, (name,)) for name in members]
    by_unit: dict[str, list[str]] = {}
    for name in members:
        match = _BLOCK_INDEX.search(f".{name}.")
        if match is None:
            unit_id = "noblock"
        else:
            block = int(match.group(1))
            start = block - block % group.blocks_per_unit
            end = start + group.blocks_per_unit - 1
            unit_id = f"block{block}" if group.blocks_per_unit == 1 else f"blocks{start}-{end}"
        by_unit.setdefault(unit_id, []).append(name)
    return [Unit(group, unit_id, tuple(mods)) for unit_id, mods in by_unit.items()]


@dataclass(frozen=True)
class BoundSpace:
    """A space resolved against one model: the units that share choices, in a stable order."""

    space: SearchSpace
    units: tuple[Unit, ...]
    module_names: tuple[str, ...]

    def sample(self, ask: Ask, model: str | None = None) -> Plan:
        """Build a plan by asking for each unit's free choices, define-by-run.

        ``ask(name, domain)`` returns a value inside ``domain``; it is called only for choices
        that are free and that matter: no sparsity for an N:M structure (it is implied), no
        group size, symmetry or method for 16-bit (unquantized) layers, no symmetry for
        ``rtn_fmin`` (a float-minimum grid is asymmetric).
        """
        layers: dict[str, LayerConfig] = {}
        for unit in self.units:
            config = self._sample_unit(unit, ask)
            for module in unit.modules:
                layers[module] = config
        return self.space.base_plan(layers, model=model)

    @staticmethod
    def _sample_unit(unit: Unit, ask: Ask) -> LayerConfig:
        group = unit.group

        def value(key: str):
            domain = getattr(group, key)
            return domain.value if isinstance(domain, Fixed) else ask(unit.param(key), domain)

        structure = value("structure")
        amount = 0.0 if parse_structure(structure) is not None else float(value("sparsity"))
        bits = int(value("bits"))
        fmt = value("format")
        if fmt is not None:
            quant = QuantConfig(format=str(fmt))
        elif bits == KEEP_BITS:
            quant = QuantConfig(bits=bits)
        else:
            method = str(value("method"))
            symmetric = False if method == "rtn_fmin" else bool(value("symmetric"))
            quant = QuantConfig(bits=bits, group_size=int(value("group_size")), symmetric=symmetric, method=method)
        return LayerConfig(
            sparsity=SparsityConfig(amount=amount, structure=structure),
            quant=quant,
            adapter=AdapterConfig(rank=int(value("rank"))),
        )

    def uniform_choices(self, points: int = 5) -> list[dict[str, object]]:
        """Every uniform combination of the space's choices (the same value for every unit),
        as ``{key: value}`` maps; keys a unit's domain does not offer are skipped for it."""
        keys = [k for k in CHOICE_KEYS]
        per_key = {}
        for key in keys:
            values: list = []
            for group in self.space.groups:
                for v in getattr(group, key).grid(points):
                    if v not in values:
                        values.append(v)
            per_key[key] = values
        combos: list[dict] = [{}]
        for key in keys:
            combos = [{**c, key: v} for c in combos for v in per_key[key]]
        seen, unique = set(), []
        for combo in combos:
            params = self.params_for(combo)
            signature = tuple(sorted(params.items(), key=lambda kv: kv[0]))
            if signature not in seen:
                seen.add(signature)
                unique.append(combo)
        return unique

    def params_for(self, choices: dict[str, object]) -> dict[str, object]:
        """Parameter values that give every unit ``choices`` (uniform plans, warm starts).

        A value outside a unit's domain is clamped to the nearest allowed one, so a uniform
        recipe maps onto every group even when groups offer different lists.
        """
        params: dict[str, object] = {}

        def ask(name: str, domain: Domain):
            key = name.rsplit("/", 1)[1]
            chosen = nearest_value(domain, choices.get(key))
            params[name] = chosen
            return chosen

        self.sample(ask)
        return params


def load_space(source: str | Path | dict) -> SearchSpace:
    """Load a space from a ``builtin:<name>``, a YAML file path, or an already-parsed mapping."""
    if isinstance(source, dict):
        return SearchSpace.from_dict(source)
    source = str(source)
    if source.startswith("builtin:"):
        from presso.spaces._builtin import builtin_space_path

        path = builtin_space_path(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise PressoError(f"space: file {source!r} does not exist; allowed: a YAML file or a built-in such as 'builtin:smollm2-135m'")
    data = read_data_file(path, "space file")
    return SearchSpace.from_dict(data)
