"""Quantization methods: one interface (:class:`Quantizer`), one registry, one module per method.

========== ======= ========== =====================================================
method     zero    statistics what it does
========== ======= ========== =====================================================
rtn        int     none       round-to-nearest over the group's min/max (the default)
rtn_fmin   float   none       round-to-nearest with an fp16 group minimum (GGUF Q4_1)
imatrix    int     norms      scale/zero chosen on a grid by activation-weighted error
gptq       int     hessian    error feedback through X^T X (Frantar et al., 2022)
========== ======= ========== =====================================================

SparseGPT (pruning with the same Hessians, and joint pruning + GPTQ in one sweep) is a pruning
criterion, ``criterion: sparsegpt``, in :mod:`presso.compress._sparsegpt`.

A new method is one module with a :class:`Quantizer` subclass decorated with
:func:`register_quantizer`, which also declares its name to :func:`presso.plan.register_quant_method`
(plans check names without torch).
"""

from presso.compress.quantizers._base import (LayerStats, QuantLayout, Quantizer, dequantize_layout,
                                              layout_nbytes)
from presso.compress.quantizers._cache import LayerCache
from presso.compress.quantizers._registry import get_quantizer, register_quantizer, registered_quantizers
from presso.compress.quantizers import gptq, imatrix, rtn, rtn_fmin  # noqa: F401  (registration)

__all__ = [
    "LayerCache",
    "LayerStats",
    "QuantLayout",
    "Quantizer",
    "dequantize_layout",
    "get_quantizer",
    "layout_nbytes",
    "register_quantizer",
    "registered_quantizers",
]
