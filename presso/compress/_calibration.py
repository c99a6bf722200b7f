"""Things computed ONCE per worker from the uncompressed model and reused by every trial:
input-activation statistics for Wanda and the quantizers (squared norms, and input Hessians
``X^T X`` when a method such as GPTQ needs them), and the teacher's outputs for recovery
distillation."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from presso.compress._kl import gather_with_tail, topk_kl, topk_with_tail
from presso.errors import PressoError


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_ids(input_ids) -> torch.Tensor:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        got = f"{type(input_ids).__name__}" if not isinstance(input_ids, torch.Tensor) else f"{input_ids.dtype} {tuple(input_ids.shape)}"
        raise PressoError(f"input_ids: got {got}; allowed: a LongTensor [n_sequences, seq_len]")
    if input_ids.shape[0] == 0:
        raise PressoError("input_ids: got 0 sequences; allowed: at least one")
    return input_ids


@dataclass
class CalibrationStats:
    """Per-module sums of squared input activations over the calibration tokens.

    Attributes:
        sq_norms: ``{fqn: float32 tensor [in_features]}``, ``sum_t x_tj**2``; Wanda uses its sqrt.
        n_tokens: calibration tokens seen.
        cache_ranks: keep each module's per-row Wanda order after its first use (see
            :meth:`row_ranks`), so later unstructured Wanda masks cost one comparison instead of
            a per-row selection. Costs 2 bytes per weight; search workers turn it on.
        hessians: ``{fqn: float32 tensor [in, in]}``, ``sum_t x_t x_t^T``, when collected
            (``collect_calibration(..., hessians=True)``); modules that read the same input
            (q/k/v, gate/up) share one tensor.
    """

    sq_norms: dict[str, torch.Tensor]
    n_tokens: int
    cache_ranks: bool = False
    _ranks: dict = field(default_factory=dict, repr=False, compare=False)
    hessians: dict[str, torch.Tensor] | None = None

    def layer_stats(self, name: str):
        """The :class:`~presso.compress.quantizers.LayerStats` of module ``name`` (for a quantizer)."""
        from presso.compress.quantizers import LayerStats

        hessian = None if self.hessians is None else self.hessians.get(name)
        return LayerStats(sq_norms=self.sq_norms.get(name), hessian=hessian, n_tokens=self.n_tokens)

    @torch.no_grad()
    def row_ranks(self, name: str, weight: torch.Tensor) -> torch.Tensor | None:
        """Per-row Wanda ranks of ``weight`` (module ``name``), cached when ``cache_ranks`` is on.

        A cached entry is reused only while a sample of the weight still matches the one it was
        computed from (so a different model with the same module names recomputes it).
        Returns ``None`` when caching is off.
        """
        if not self.cache_ranks:
            return None
        from presso.compress._prune import wanda_row_ranks

        sample = _fingerprint(weight)
        hit = self._ranks.get(name)
        if hit is not None and hit[0].shape == sample.shape and torch.equal(hit[0], sample):
            return hit[1]
        ranks = wanda_row_ranks(weight, self.sq_norms[name])
        self._ranks[name] = (sample, ranks)
        return ranks


def _fingerprint(weight: torch.Tensor, count: int = 4096) -> torch.Tensor:
    """A strided sample of ``weight`` (with its shape in front) that identifies it cheaply."""
    flat = weight.detach().reshape(-1)
    step = max(1, flat.numel() // count)
    shape = torch.tensor(list(weight.shape), dtype=flat.dtype, device=flat.device)
    return torch.cat([shape, flat[::step][:count]]).clone()


@torch.no_grad()
def collect_calibration(
    model: nn.Module, input_ids: torch.Tensor, module_names=None, batch_size: int = 8, *, hessians: bool = False
) -> CalibrationStats:
    """Run the (uncompressed) model over calibration tokens and record input-feature norms
    (and, with ``hessians=True``, the input Hessians ``X^T X`` in the same pass).

    Build this once per worker; it is read-only afterwards and shared by all trials.

    Args:
        model: the dense model (any device; ``input_ids`` are moved there).
        input_ids: ``LongTensor [n, seq_len]`` of calibration token ids.
        module_names: Linear FQNs to watch; default: all of :func:`compressible_modules`.
        batch_size: sequences per forward pass.
        hessians: also accumulate ``X^T X`` per distinct layer input (float32, on the model's
            device; ``in**2`` floats each), as GPTQ needs.

    Returns:
        A :class:`CalibrationStats`.

    Example::

        stats = collect_calibration(model, token_ids)  # once per worker
    """
    from presso.compress._modules import compressible_modules

    input_ids = _check_ids(input_ids)
    modules = compressible_modules(model)
    names = list(modules) if module_names is None else list(module_names)
    for name in names:
        if name not in modules:
            raise PressoError(f"module_names: {name!r} is not a compressible module; modules look like: {', '.join(list(modules)[:3])}")
    device = _model_device(model)
    sums = {name: torch.zeros(modules[name].in_features, dtype=torch.float32, device=device) for name in names}
    handles = []
    hess: dict[str, torch.Tensor] = {}
    owner: dict[str, str] = {}  # module -> the module whose Hessian it shares (same input tensor)
    last: list = [None, None]  # the latest input tensor seen and its owner

    def hook(name):
        def fn(module, args):
            x = args[0].detach()
            flat = x.reshape(-1, x.shape[-1]).to(torch.float32)
            sums[name] += flat.pow(2).sum(dim=0)
            if not hessians:
                return
            # NOTE: q/k/v (and gate/up) read the very same tensor one after the other; one X^T X
            # serves them all. Sharing is decided on the first batch and kept after.
            if name not in owner:
                owner[name] = last[1] if last[0] is args[0] else name
            if owner[name] != name:
                return
            last[0], last[1] = args[0], name
            if name not in hess:
                hess[name] = torch.zeros(flat.shape[1], flat.shape[1], dtype=torch.float32, device=flat.device)
            hess[name].addmm_(flat.t(), flat)

        return fn

    for name in names:
        handles.append(modules[name].register_forward_pre_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            model(input_ids=input_ids[start : start + batch_size].to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        last.clear()
    shared = {name: hess[owner[name]] for name in owner} if hessians else None
    return CalibrationStats(sq_norms=sums, n_tokens=int(input_ids.numel()), hessians=shared)


class TeacherCache:
    """The uncompressed model's outputs on the calibration tokens, for recovery distillation.

    For a causal LM it keeps, per token, the teacher's top-``k`` log-probabilities, their
    token ids and the log of the remaining probability mass (full 49k-vocab logits would
    not fit). The distillation loss is then the exact KL divergence between the teacher's
    and the student's distributions coarsened to ``k + 1`` buckets (the top-k tokens and
    "everything else"), a lower bound of the full KL that is exact as the tail vanishes.
    For an encoder (``AutoModel``) it keeps ``last_hidden_state`` and the loss is the mean
    squared error normalised by the teacher's mean square.

    Build once per worker with :meth:`build`; every trial reuses it read-only.

    Example::

        teacher = TeacherCache.build(dense_model, token_ids, top_k=64)   # once per worker
        kl = teacher.divergence(compressed_model)                         # per trial
    """

    def __init__(self, input_ids, *, top_logprobs=None, top_ids=None, tail_logprob=None, hidden=None):
        self.input_ids = input_ids
        self.top_logprobs = top_logprobs
        self.top_ids = top_ids
        self.tail_logprob = tail_logprob
        self.hidden = hidden

    @property
    def causal(self) -> bool:
        return self.top_logprobs is not None

    @property
    def n_sequences(self) -> int:
        return int(self.input_ids.shape[0])

    @classmethod
    @torch.no_grad()
    def build(cls, model: nn.Module, input_ids: torch.Tensor, top_k: int = 64, batch_size: int = 4) -> "TeacherCache":
        """Run the dense model once over ``input_ids`` and keep what distillation needs.

        Args:
            model: the uncompressed model (causal LM or encoder), on any device.
            input_ids: ``LongTensor [n, seq_len]``.
            top_k: teacher log-probs kept per token (causal LMs only).
            batch_size: sequences per forward pass.

        Returns:
            A :class:`TeacherCache` whose tensors live on the model's device.
        """
        from presso.compress._modules import is_causal_lm

        input_ids = _check_ids(input_ids)
        if not isinstance(top_k, int) or top_k < 1:
            raise PressoError(f"top_k: got {top_k!r}; allowed: an integer >= 1")
        device = _model_device(model)
        input_ids = input_ids.to(device)
        causal = is_causal_lm(model)
        was_training = model.training
        model.eval()
        parts: dict[str, list[torch.Tensor]] = {"lp": [], "ids": [], "tail": [], "hidden": []}
        try:
            for start in range(0, input_ids.shape[0], batch_size):
                out = model(input_ids=input_ids[start : start + batch_size])
                if causal:
                    logits = out.logits.to(torch.float32)
                    k = min(top_k, logits.shape[-1])
                    top_lp, ids, tail = topk_with_tail(logits, k)
                    parts["lp"].append(top_lp)
                    parts["ids"].append(ids.to(torch.int32))
                    parts["tail"].append(tail)
                else:
                    parts["hidden"].append(out.last_hidden_state.to(torch.float32))
        finally:
            model.train(was_training)
        if causal:
            return cls(input_ids, top_logprobs=torch.cat(parts["lp"]), top_ids=torch.cat(parts["ids"]),
                       tail_logprob=torch.cat(parts["tail"]))
        return cls(input_ids, hidden=torch.cat(parts["hidden"]))

    def loss(self, model: nn.Module, index: torch.Tensor) -> torch.Tensor:
        """Differentiable distillation loss of ``model`` on cached sequences ``index`` (mean per token)."""
        ids = self.input_ids[index]
        out = model(input_ids=ids)
        if not self.causal:
            student = out.last_hidden_state.to(torch.float32)
            teacher = self.hidden[index]
            return (student - teacher).pow(2).mean() / teacher.pow(2).mean().clamp(min=1e-12)
        top_ids = self.top_ids[index].to(torch.long)
        s_top, s_tail = gather_with_tail(out.logits.to(torch.float32), top_ids)
        return topk_kl(self.top_logprobs[index], self.tail_logprob[index], s_top, s_tail).mean()

    @torch.no_grad()
    def divergence(self, model: nn.Module, batch_size: int = 4) -> float:
        """Mean distillation loss of ``model`` over all cached sequences (KL for causal LMs)."""
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for start in range(0, self.n_sequences, batch_size):
                index = torch.arange(start, min(start + batch_size, self.n_sequences), device=self.input_ids.device)
                total += float(self.loss(model, index)) * len(index)
                count += len(index)
        finally:
            model.train(was_training)
        return total / count

