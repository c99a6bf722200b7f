"""Which modules a plan may touch, and how to find them again after adapters wrap them."""

from __future__ import annotations

from torch import nn

from presso.errors import PressoError

AUTO_CAUSAL_LM = "AutoModelForCausalLM"
AUTO_MODEL = "AutoModel"
AUTO_SEQUENCE_CLASSIFICATION = "AutoModelForSequenceClassification"
AUTO_TOKEN_CLASSIFICATION = "AutoModelForTokenClassification"
AUTO_CLASSES = (AUTO_CAUSAL_LM, AUTO_MODEL, AUTO_SEQUENCE_CLASSIFICATION, AUTO_TOKEN_CLASSIFICATION)
"""The auto classes a saved model may name: an allowlist, nothing else is imported by name."""


def _block_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The ``nn.ModuleList`` of transformer blocks: the list of same-type children holding the most Linears."""
    best, best_count = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        count = sum(isinstance(m, nn.Linear) for m in module.modules())
        if count > best_count:
            best, best_count = (name, module), count
    return best


def compressible_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers inside the transformer blocks, in model order, by fully qualified name.

    The blocks are the model's ``nn.ModuleList`` of identical layers (``model.layers`` in
    Llama-style models, ``encoder.layer`` in BERT-style ones), so embeddings, ``lm_head`` and
    poolers are excluded. On a model whose Linears were already wrapped by LoRA adapters the
    wrapper's name maps to its ``base_layer``; adapter matrices are never listed.

    Args:
        model: a Hugging Face transformers model (or any module with a block list).

    Returns:
        ``{fqn: nn.Linear}`` in ``named_modules()`` order.

    Raises:
        PressoError: the model has no list of blocks containing Linear layers.

    Example::

        names = list(compressible_modules(model))  # ['model.layers.0.self_attn.q_proj', ...]
    """
    found = _block_list(model)
    if found is None:
        raise PressoError(
            f"model: {type(model).__name__} has no nn.ModuleList of transformer blocks with nn.Linear layers; "
            "allowed: Llama- or BERT-style transformers models"
        )
    prefix, blocks = found
    out: dict[str, nn.Linear] = {}
    for name, module in blocks.named_modules():
        if not isinstance(module, nn.Linear) or not name:
            continue
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue
        if parts[-1] == "base_layer":
            parts = parts[:-1]
        out[".".join([prefix, *parts])] = module
    return out


def embedding_modules(model: nn.Module) -> dict[str, nn.Embedding]:
    """The model's ``nn.Embedding`` tables (token, position, type), by fully qualified name.

    They are compressed only when a plan or a space names them exactly: catch-all patterns
    such as ``re:.*`` keep meaning "the Linear layers of the blocks". A tied output head
    (``lm_head`` sharing ``embed_tokens.weight``) follows its embedding, as it is stored once.
    """
    return {name: module for name, module in model.named_modules()
            if isinstance(module, nn.Embedding) and not any(p.startswith("lora_") for p in name.split("."))}


def target_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Everything a plan may compress: the embedding tables, then the block Linears."""
    return {**embedding_modules(model), **compressible_modules(model)}


def base_module(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    """The plain ``nn.Linear`` (or ``nn.Embedding``) at ``fqn`` and the state-dict prefix of its parameters.

    After LoRA injection the module at ``fqn`` is a wrapper whose ``base_layer`` holds the
    frozen weight, stored under ``{fqn}.base_layer.weight``.
    """
    module = model.get_submodule(fqn)
    if isinstance(module, (nn.Linear, nn.Embedding)) and not hasattr(module, "base_layer"):
        return module, fqn
    base = getattr(module, "base_layer", None)
    if isinstance(base, nn.Linear):
        return base, f"{fqn}.base_layer"
    raise PressoError(f"module {fqn!r}: got {type(module).__name__}; allowed: nn.Linear (optionally LoRA-wrapped) or nn.Embedding")


def _class_names(mapping) -> set[str]:
    names = set()
    for value in mapping.values():
        names.update((value,) if isinstance(value, str) else value)
    return names


def auto_class_name(model: nn.Module) -> str:
    """The name of the auto class that loads ``model``: one of :data:`AUTO_CLASSES`
    (``"AutoModelForCausalLM"`` for causal LMs, ``"AutoModel"`` for bare encoders, and the
    sequence- and token-classification auto classes for models with those heads)."""
    from transformers.models.auto import modeling_auto as auto

    cls = type(model).__name__
    for name, mapping in (
        (AUTO_CAUSAL_LM, auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES),
        (AUTO_SEQUENCE_CLASSIFICATION, auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES),
        (AUTO_TOKEN_CLASSIFICATION, auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES),
        (AUTO_MODEL, auto.MODEL_MAPPING_NAMES),
    ):
        if cls in _class_names(mapping):
            return name
    raise PressoError(
        f"model: {cls} is not a causal LM, a classification model or a bare transformers model; "
        f"allowed: classes loadable by {', '.join(AUTO_CLASSES)}"
    )


def is_causal_lm(model: nn.Module) -> bool:
    return auto_class_name(model) == AUTO_CAUSAL_LM
