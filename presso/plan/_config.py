"""Plan dataclasses. Every value is checked in ``__post_init__``; errors name the field,
the value and what is allowed."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum

from presso.errors import PressoError, did_you_mean

KEEP_BITS = 16
"""``bits: 16`` keeps a layer's weights unquantized, in the model's own dtype."""

BITS_ALLOWED = (2, 3, 4, 5, 6, 7, 8, KEEP_BITS)
STORAGE_FORMATS = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0",
                   "IQ4_NL", "Q3_K", "Q2_K")
"""ggml block formats (GGUF tensor types) a layer may name in ``quant.format``, largest first."""
FORMAT_BITS = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K": 5.5, "Q5_1": 6.0,
               "Q5_0": 5.5, "Q4_K": 4.5, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_NL": 4.5, "Q3_K": 3.4375, "Q2_K": 2.625}
"""Stored bits per weight of each format, block scales included (checked against gguf's table in the tests)."""
GPTQ_FORMATS = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0", "IQ4_NL")
"""Formats ``quant.method: gptq`` can round inside: ggml's 32-value blocks with fixed scales (no K-quants, no floats)."""
IMPORTANCE_FORMATS = frozenset({"Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "IQ4_NL", "Q3_K", "Q2_K"})
"""Formats whose ggml quantizer weighs errors by an importance matrix from calibration text."""
UNSTRUCTURED = "unstructured"

QUANT_NEEDS = ("none", "norms", "hessian")
"""Calibration statistics a quantization method may need: none, squared input norms (``"norms"``)
or ``X^T X`` (``"hessian"``)."""
_QUANT_METHODS: dict[str, str] = {}


def register_quant_method(name: str, needs: str) -> None:
    """Declare ``quant.method`` ``name`` and the statistics it needs, so plans accept it.

    :func:`presso.compress.quantizers.register_quantizer` calls this for every handler, so a
    plugin quantizer needs no edit here. Declaring a name again with the same ``needs`` is a
    no-op; with other ``needs`` it is an error.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise PressoError(f"quant method: got name {name!r}; allowed: an identifier such as 'rtn'")
    if needs not in QUANT_NEEDS:
        raise PressoError(f"quant method {name!r}: needs {needs!r}; allowed: {list(QUANT_NEEDS)}")
    if _QUANT_METHODS.get(name, needs) != needs:
        raise PressoError(f"quant method {name!r} is already declared with needs {_QUANT_METHODS[name]!r}, "
                          f"got {needs!r}")
    _QUANT_METHODS[name] = needs


def quant_methods() -> dict[str, str]:
    """``{method name: statistics it needs}`` of every declared quantization method (a copy)."""
    return dict(_QUANT_METHODS)


# NOTE: the builtin methods are declared here as well as by their handlers because plans and
# spaces check method names without importing torch, and the handlers (presso.compress) need it.
# Their handlers re-declare them on import; tests/compress/test_quantizers.py checks both agree.
for _name, _needs in (("rtn", "none"), ("rtn_fmin", "none"), ("imatrix", "norms"), ("gptq", "hessian")):
    register_quant_method(_name, _needs)
_N_M = re.compile(r"^(\d+):(\d+)$")


class PruneCriterion(str, Enum):
    """How weights are ranked for pruning."""

    MAGNITUDE = "magnitude"  # |W|, layer-wise
    WANDA = "wanda"  # |W| * ||X_j||_2 per output row (Sun et al., 2023)
    # OBS saliency w^2 / [H^-1]_jj with error feedback through X^T X (Frantar & Alistarh, 2023);
    # with quant.method gptq the layer is pruned and quantized in one sweep.
    SPARSEGPT = "sparsegpt"


def parse_structure(structure: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> ``None``; ``"2:4"`` -> ``(2, 4)`` (keep N of every M inputs)."""
    if structure == UNSTRUCTURED:
        return None
    match = _N_M.match(str(structure))
    if not match:
        raise PressoError(
            f"sparsity.structure: got {structure!r}; allowed: 'unstructured' or 'N:M' such as '2:4' (keep N of every M)"
        )
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m <= 64:
        raise PressoError(f"sparsity.structure: 'N:M' needs 0 < N < M <= 64, got {structure!r}")
    return n, m


def _check_type(where: str, value, types, allowed: str):
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise PressoError(f"{where}: got {value!r}; allowed: {allowed}")
    if not isinstance(value, types):
        raise PressoError(f"{where}: got {value!r} ({type(value).__name__}); allowed: {allowed}")


@dataclass(frozen=True)
class SparsityConfig:
    """Pruning of one module's weight.

    Args:
        amount: fraction of weights set to zero, in [0, 1). For ``N:M`` it is implied
            (``(M - N) / M``) and may be left out.
        structure: ``"unstructured"`` or ``"N:M"`` (keep N of every M consecutive inputs).
    """

    amount: float = 0.0
    structure: str = UNSTRUCTURED

    def __post_init__(self):
        _check_type("sparsity.amount", self.amount, (int, float), "a number in [0, 1)")
        if not (0.0 <= self.amount < 1.0) or math.isnan(self.amount):
            raise PressoError(f"sparsity.amount: got {self.amount!r}; allowed: a fraction in [0, 1)")
        n_m = parse_structure(self.structure)
        if n_m is not None:
            implied = (n_m[1] - n_m[0]) / n_m[1]
            if self.amount == 0.0:
                object.__setattr__(self, "amount", implied)
            elif abs(self.amount - implied) > 1e-9:
                raise PressoError(
                    f"sparsity.amount: got {self.amount!r} with structure {self.structure!r}, "
                    f"which implies {implied!r}; leave amount out for N:M"
                )
        object.__setattr__(self, "amount", float(self.amount))

    @property
    def n_m(self) -> tuple[int, int] | None:
        return parse_structure(self.structure)

    @property
    def active(self) -> bool:
        return self.amount > 0.0


@dataclass(frozen=True)
class QuantConfig:
    """Weight quantization with integer codes.

    Args:
        bits: code width; one of 2-8, or 16 to keep the weights unquantized.
        group_size: inputs sharing one scale (and zero point); 0 means one group per
            output channel. Must divide the layer's input width.
        symmetric: codes centred on zero (no zero point) instead of asymmetric min/max.
        method: how weights round onto the grid, one of :func:`quant_methods`: ``"rtn"``
            (round to nearest, integer zero point), ``"rtn_fmin"`` (fp16 group minimum, as
            GGUF Q4_1), ``"imatrix"`` (activation-weighted choice of scale and zero) or
            ``"gptq"`` (error feedback through the input Hessian).
        format: instead of ``bits``/``group_size``/``symmetric``, a ggml block format of
            :data:`STORAGE_FORMATS` (``Q4_K``, ``Q8_0``, ...), quantized by ggml itself as
            llama.cpp would (the ``gguf`` target stores it as is). ``None``: Presso's own codes.
            With a format, ``method`` is ``"rtn"`` (ggml's blocks) or, for :data:`GPTQ_FORMATS`,
            ``"gptq"`` (ggml's block scales, GPTQ's rounding inside them).
    """

    bits: int = KEEP_BITS
    group_size: int = 0
    symmetric: bool = False
    format: str | None = None
    method: str = "rtn"

    def __post_init__(self):
        _check_type("quant.bits", self.bits, int, f"one of {list(BITS_ALLOWED)}")
        if self.bits not in BITS_ALLOWED:
            raise PressoError(f"quant.bits: got {self.bits!r}; allowed: {list(BITS_ALLOWED)} (16 keeps the weights)")
        _check_type("quant.group_size", self.group_size, int, "0 (per channel) or a positive integer such as 32, 64, 128")
        if self.group_size < 0:
            raise PressoError(
                f"quant.group_size: got {self.group_size!r}; allowed: 0 (per channel) or a positive integer such as 32, 64, 128"
            )
        _check_type("quant.symmetric", self.symmetric, bool, "true or false")
        if self.format is not None:
            if self.format not in STORAGE_FORMATS:
                raise PressoError(f"quant.format: got {self.format!r}; allowed: {list(STORAGE_FORMATS)} or null")
            if self.bits != KEEP_BITS or self.group_size or self.symmetric:
                raise PressoError(f"quant.format: got {self.format!r} together with bits={self.bits}, "
                                  f"group_size={self.group_size}; allowed: a format OR bits/group_size, not both")
        if not isinstance(self.method, str) or self.method not in _QUANT_METHODS:
            raise PressoError(f"quant.method: got {self.method!r}{did_you_mean(str(self.method), _QUANT_METHODS)}; "
                              f"allowed: {sorted(_QUANT_METHODS)}")
        if self.format is not None and self.method == "gptq" and self.format not in GPTQ_FORMATS:
            raise PressoError(f"quant.format: got {self.format!r} with method 'gptq'; allowed: {list(GPTQ_FORMATS)} "
                              "(GPTQ rounds inside 32-value blocks with fixed scales)")
        if self.format is not None and self.method not in ("rtn", "gptq"):
            raise PressoError(f"quant.method: got {self.method!r} with format {self.format!r}; allowed: 'rtn' or 'gptq' "
                              "(ggml's own quantizer makes a format's blocks)")
        if self.method == "rtn_fmin" and self.symmetric:
            raise PressoError("quant.symmetric: got true with method 'rtn_fmin'; allowed: false "
                              "(an fp16 group minimum is an asymmetric grid)")

    @property
    def needs(self) -> str:
        """Calibration statistics the method needs: ``"none"``, ``"norms"`` or ``"hessian"``."""
        if self.format is not None and self.method == "gptq":
            return "hessian"
        if self.format is not None:
            return "norms" if self.uses_importance else "none"
        return _QUANT_METHODS[self.method] if self.active else "none"

    @property
    def active(self) -> bool:
        return self.bits != KEEP_BITS or self.format is not None

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight: ``bits`` for Presso's codes (scales not counted), a format's block bits."""
        return self.bits if self.format is None else FORMAT_BITS[self.format]

    @property
    def uses_importance(self) -> bool:
        """Whether quantizing this layer reads calibration statistics (an importance matrix)."""
        return self.format in IMPORTANCE_FORMATS


@dataclass(frozen=True)
class AdapterConfig:
    """A LoRA adapter trained during recovery; kept in full precision.

    Args:
        rank: LoRA rank; 0 means no adapter.
        alpha: LoRA scaling numerator; defaults to ``2 * rank``.
    """

    rank: int = 0
    alpha: float | None = None

    def __post_init__(self):
        _check_type("adapter.rank", self.rank, int, "an integer >= 0 (0 = no adapter)")
        if self.rank < 0:
            raise PressoError(f"adapter.rank: got {self.rank!r}; allowed: an integer >= 0 (0 = no adapter)")
        if self.alpha is not None:
            _check_type("adapter.alpha", self.alpha, (int, float), "a positive number")
            if not self.alpha > 0:
                raise PressoError(f"adapter.alpha: got {self.alpha!r}; allowed: a positive number")
            object.__setattr__(self, "alpha", float(self.alpha))

    @property
    def active(self) -> bool:
        return self.rank > 0

    @property
    def effective_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank


@dataclass(frozen=True)
class LayerConfig:
    """Everything done to one module: prune, then quantize, then (optionally) an adapter."""

    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def __post_init__(self):
        for name, cls in (("sparsity", SparsityConfig), ("quant", QuantConfig), ("adapter", AdapterConfig)):
            if not isinstance(getattr(self, name), cls):
                raise PressoError(f"layer.{name}: got {getattr(self, name)!r}; allowed: a {cls.__name__}")

    @property
    def is_identity(self) -> bool:
        return not (self.sparsity.active or self.quant.active or self.adapter.active)


@dataclass(frozen=True)
class RecoveryConfig:
    """Recovery fine-tuning of the adapters: distillation from the uncompressed model.

    Args:
        steps: optimizer steps (0 = adapters stay at their zero initialisation).
        lr: AdamW learning rate.
        batch_size: sequences per step.
    """

    steps: int = 0
    lr: float = 1e-4
    batch_size: int = 4

    def __post_init__(self):
        _check_type("recovery.steps", self.steps, int, "an integer >= 0")
        if self.steps < 0:
            raise PressoError(f"recovery.steps: got {self.steps!r}; allowed: an integer >= 0")
        _check_type("recovery.lr", self.lr, (int, float), "a positive number such as 1e-4")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise PressoError(f"recovery.lr: got {self.lr!r}; allowed: a positive finite number such as 1e-4")
        object.__setattr__(self, "lr", float(self.lr))
        _check_type("recovery.batch_size", self.batch_size, int, "an integer >= 1")
        if self.batch_size < 1:
            raise PressoError(f"recovery.batch_size: got {self.batch_size!r}; allowed: an integer >= 1")


@dataclass(frozen=True)
class Plan:
    """A compression plan: per-module configs plus global settings.

    ``layers`` maps a module's fully qualified name, or ``"re:<regex>"``, to its
    :class:`LayerConfig`. An exact name wins over patterns; among patterns the first one
    (in order) whose regex fully matches the name wins. Modules that no key matches stay
    untouched. (The dict is not copied; treat it as read-only.)

    Example::

        plan = Plan(layers={"model.layers.0.mlp.up_proj": LayerConfig(quant=QuantConfig(bits=4, group_size=32))})
    """

    layers: dict[str, LayerConfig] = field(default_factory=dict)
    model: str | None = None
    criterion: PruneCriterion = PruneCriterion.MAGNITUDE
    calibration_samples: int = 32
    calibration_seq_len: int = 128
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    seed: int = 0
    target: str | None = None

    def __post_init__(self):
        if not isinstance(self.layers, dict):
            raise PressoError(f"plan.layers: got {type(self.layers).__name__}; allowed: a mapping of module name -> layer config")
        for key, cfg in self.layers.items():
            if not isinstance(key, str) or not key:
                raise PressoError(f"plan.layers: key {key!r} is not a module name or 're:<regex>'")
            if key.startswith("re:"):
                try:
                    re.compile(key[3:])
                except re.error as exc:
                    raise PressoError(f"plan.layers: key {key!r} is not a valid regex ({exc})") from None
            if not isinstance(cfg, LayerConfig):
                raise PressoError(f"plan.layers[{key!r}]: got {cfg!r}; allowed: a LayerConfig")
        try:
            object.__setattr__(self, "criterion", PruneCriterion(self.criterion))
        except ValueError:
            allowed = [c.value for c in PruneCriterion]
            raise PressoError(f"plan.criterion: got {self.criterion!r}; allowed: {allowed}") from None
        for name, low in (("calibration_samples", 1), ("calibration_seq_len", 8)):
            value = getattr(self, name)
            _check_type(f"plan.{name}", value, int, f"an integer >= {low}")
            if value < low:
                raise PressoError(f"plan.{name}: got {value!r}; allowed: an integer >= {low}")
        _check_type("plan.seed", self.seed, int, "an integer")
        if self.model is not None and not isinstance(self.model, str):
            raise PressoError(f"plan.model: got {self.model!r}; allowed: a model reference string")
        if not isinstance(self.recovery, RecoveryConfig):
            raise PressoError(f"plan.recovery: got {self.recovery!r}; allowed: a RecoveryConfig")
        if self.target is not None and not isinstance(self.target, str):
            raise PressoError(f"plan.target: got {self.target!r}; allowed: a target name such as 'gguf'")

    def config_for(self, module_name: str) -> LayerConfig | None:
        """The config that applies to ``module_name`` under the precedence rule, or None."""
        if module_name in self.layers:
            return self.layers[module_name]
        for key, cfg in self.layers.items():
            if key.startswith("re:") and re.fullmatch(key[3:], module_name):
                return cfg
        return None

    def resolve(self, module_names, exact_names=()) -> dict[str, LayerConfig]:
        """Map each of ``module_names`` that the plan covers to its config (identity configs dropped).

        ``exact_names`` (the embedding tables) are covered only by a key that names them
        exactly, never by a ``re:`` pattern; they come first in the result.

        Raises:
            PressoError: an exact key names no module in ``module_names`` or ``exact_names``.
        """
        names, exact = list(module_names), list(exact_names)
        known = set(names) | set(exact)
        for key in self.layers:
            if not key.startswith("re:") and key not in known:
                sample = ", ".join(names[:5])
                raise PressoError(f"plan.layers: module {key!r} is not in the model; modules look like: {sample}")
        resolved = {name: self.layers[name] for name in exact
                    if name in self.layers and not self.layers[name].is_identity}
        for name in names:
            cfg = self.config_for(name)
            if cfg is not None and not cfg.is_identity:
                resolved[name] = cfg
        return resolved

    @property
    def needs_calibration(self) -> bool:
        by_activations = self.criterion is not PruneCriterion.MAGNITUDE and any(c.sparsity.active for c in self.layers.values())
        return by_activations or any(c.quant.needs != "none" for c in self.layers.values())

    @property
    def needs_hessians(self) -> bool:
        """Whether some layer's quantization method (or SparseGPT pruning) needs input Hessians (``X^T X``)."""
        sparsegpt = self.criterion is PruneCriterion.SPARSEGPT and any(c.sparsity.active for c in self.layers.values())
        return sparsegpt or any(c.quant.needs == "hessian" for c in self.layers.values())

    @property
    def needs_recovery(self) -> bool:
        return self.recovery.steps > 0 and any(c.adapter.active for c in self.layers.values())
