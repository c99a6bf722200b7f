"""LoRA adapters (peft, injected in place) and the recovery fine-tune that trains them."""

from __future__ import annotations

import re

import torch
from torch import nn

ADAPTER_NAME = "default"


def inject_adapters(model: nn.Module, adapters: dict[str, tuple[int, float]], seed: int) -> None:
    """Wrap each ``{fqn: (rank, alpha)}`` Linear with a LoRA adapter, in place, kept in fp32.

    Uses peft's ``inject_adapter_in_model`` with one config whose ``rank_pattern`` /
    ``alpha_pattern`` give every module its own rank (keys are escaped full names, so
    ``layers.1`` never matches ``layers.11``). ``lora_B`` starts at zero, so the model's
    outputs are unchanged until recovery trains it; ``lora_A`` is drawn from ``seed``.
    """
    if not adapters:
        return
    from peft import LoraConfig, inject_adapter_in_model

    names = list(adapters)
    first_rank, first_alpha = adapters[names[0]]
    config = LoraConfig(
        r=first_rank,
        lora_alpha=first_alpha,
        target_modules=names,
        rank_pattern={re.escape(n): r for n, (r, _) in adapters.items()},
        alpha_pattern={re.escape(n): a for n, (_, a) in adapters.items()},
        lora_dropout=0.0,
        bias="none",
    )
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=[d.index or 0 for d in devices]):
        torch.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed(seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        is_adapter = ".lora_" in name
        if is_adapter and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)
        param.requires_grad_(False)
    for name, (rank, alpha) in adapters.items():
        module = model.get_submodule(name)
        got = getattr(module, "r", {}).get(ADAPTER_NAME)
        if got != rank:
            raise RuntimeError(f"adapter on {name!r} got rank {got}, expected {rank}")


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if ".lora_" in n]


def recover_(model: nn.Module, teacher, steps: int, lr: float, batch_size: int, seed: int) -> list[float]:
    """Train only the adapters to match the teacher's outputs; returns the loss of every step.

    The model is kept in eval mode (no dropout) while gradients flow into the adapters;
    base weights are frozen, so masks and quantized values stay exactly as they were.
    """
    params = adapter_parameters(model)
    if not params or steps <= 0:
        return []
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    n = teacher.n_sequences
    order = torch.randperm(n, generator=generator)
    cursor, losses = 0, []
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            if cursor + min(batch_size, n) > n:
                order, cursor = torch.randperm(n, generator=generator), 0
            index = order[cursor : cursor + batch_size].to(teacher.input_ids.device)
            cursor += len(index)
            loss = teacher.loss(model, index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        model.train(was_training)
    return losses
