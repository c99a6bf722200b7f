"""One pair of serializers for plans: ``{"_type", "_version", "_data"}``.

``_type`` is looked up only in ``_REGISTRY`` (an allowlist); nothing here imports or calls
code named by user text. YAML goes through ``yaml.safe_load`` / ``yaml.safe_dump``.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path

import yaml

from presso._files import read_data_file
from presso.errors import PressoError, check_keys
from presso.plan._config import (
    AdapterConfig,
    LayerConfig,
    Plan,
    PruneCriterion,
    QuantConfig,
    RecoveryConfig,
    SparsityConfig,
)

PLAN_VERSION = 1
_REGISTRY = {"Plan": Plan}


def _names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


# Fields added after plans were first written; left at their defaults they are omitted, so a plan
# that does not use them serializes (and exports) exactly as before.
_LATER_FIELDS = ("method", "format")


def _simple_to_dict(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)
            if not (f.name in _LATER_FIELDS and getattr(cfg, f.name) == f.default)}


def section_from_dict(cls, data, where: str):
    """One flat section of a plan (``SparsityConfig``, ``QuantConfig``, ``AdapterConfig``,
    ``RecoveryConfig``) from a mapping; ``None`` gives the defaults, unknown keys are rejected
    with ``where`` in the message."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise PressoError(f"{where}: got {data!r}; allowed: a mapping with keys {', '.join(_names(cls))}")
    check_keys(where, data, _names(cls))
    return cls(**data)


def layer_to_dict(cfg: LayerConfig) -> dict:
    return {
        "sparsity": _simple_to_dict(cfg.sparsity),
        "quant": _simple_to_dict(cfg.quant),
        "adapter": _simple_to_dict(cfg.adapter),
    }


def layer_from_dict(data, where: str) -> LayerConfig:
    if not isinstance(data, dict):
        raise PressoError(f"{where}: got {data!r}; allowed: a mapping with keys sparsity, quant, adapter")
    check_keys(where, data, ["sparsity", "quant", "adapter"])
    return LayerConfig(
        sparsity=section_from_dict(SparsityConfig, data.get("sparsity"), f"{where}.sparsity"),
        quant=section_from_dict(QuantConfig, data.get("quant"), f"{where}.quant"),
        adapter=section_from_dict(AdapterConfig, data.get("adapter"), f"{where}.adapter"),
    )


def plan_to_dict(plan: Plan) -> dict:
    """The plan as plain data (str, int, float, bool, None, dict) in the versioned envelope."""
    data = {
        "model": plan.model,
        "criterion": plan.criterion.value,
        "calibration_samples": plan.calibration_samples,
        "calibration_seq_len": plan.calibration_seq_len,
        "recovery": _simple_to_dict(plan.recovery),
        "seed": plan.seed,
        "layers": {name: layer_to_dict(cfg) for name, cfg in plan.layers.items()},
    }
    if plan.target is not None:
        data["target"] = plan.target
    return {"_type": "Plan", "_version": PLAN_VERSION, "_data": data}


def plan_from_dict(envelope) -> Plan:
    """Inverse of :func:`plan_to_dict`; also accepts the bare ``_data`` mapping of a hand-written plan.

    Raises:
        PressoError: unknown ``_type``, unknown keys or out-of-range values (the message names the field).
    """
    if not isinstance(envelope, dict):
        raise PressoError(f"plan: got {type(envelope).__name__}; allowed: a mapping (see `presso export` output)")
    if "_type" in envelope or "_data" in envelope:
        check_keys("plan", envelope, ["_type", "_version", "_data"])
        type_name = envelope.get("_type")
        if type_name not in _REGISTRY:
            raise PressoError(f"plan._type: got {type_name!r}; allowed: {sorted(_REGISTRY)}")
        version = envelope.get("_version")
        if not isinstance(version, int) or version > PLAN_VERSION:
            raise PressoError(f"plan._version: got {version!r}; this Presso reads versions up to {PLAN_VERSION}")
        if version < PLAN_VERSION:
            warnings.warn(f"plan was written with format version {version}; reading it as {PLAN_VERSION}", stacklevel=2)
        data = envelope.get("_data") or {}
    else:
        data = envelope
    if not isinstance(data, dict):
        raise PressoError(f"plan._data: got {data!r}; allowed: a mapping")
    check_keys("plan", data, _names(Plan))
    layers_data = data.get("layers") or {}
    if not isinstance(layers_data, dict):
        raise PressoError(f"plan.layers: got {layers_data!r}; allowed: a mapping of module name -> layer config")
    layers = {str(name): layer_from_dict(cfg, f"plan.layers[{name!r}]") for name, cfg in layers_data.items()}
    kwargs = {k: v for k, v in data.items() if k not in ("layers", "recovery")}
    if "criterion" in kwargs:
        value = kwargs["criterion"]
        if value not in [c.value for c in PruneCriterion]:
            raise PressoError(f"plan.criterion: got {value!r}; allowed: {[c.value for c in PruneCriterion]}")
    recovery = section_from_dict(RecoveryConfig, data.get("recovery"), "plan.recovery")
    return Plan(layers=layers, recovery=recovery, **kwargs)


# NOTE: libyaml's emitter writes the same text as PyYAML's pure-Python one about ten times
# faster; the size of every trial's plan file is predicted from this text.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def plan_to_yaml(plan: Plan) -> str:
    return yaml.dump(plan_to_dict(plan), Dumper=_DUMPER, sort_keys=False, default_flow_style=None, width=200)


def load_plan(path: str | os.PathLike) -> Plan:
    """Read a plan from a ``.yaml``/``.yml`` or ``.json`` file."""
    data = read_data_file(Path(path), "plan file")
    return plan_from_dict(data)


def write_atomically(path: str | os.PathLike, text: str, force: bool = False) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, refusing to overwrite unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise PressoError(f"output: {str(path)!r} already exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_plan(plan: Plan, path: str | os.PathLike, force: bool = False) -> None:
    """Write ``plan`` as YAML (or JSON for a ``.json`` path), atomically."""
    path = Path(path)
    if path.suffix == ".json":
        text = json.dumps(plan_to_dict(plan), indent=1)
    else:
        text = plan_to_yaml(plan)
    write_atomically(path, text, force=force)
