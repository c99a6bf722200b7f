"""The compression engine: prune, quantize, add LoRA adapters, recover, measure, save, load.

Typical use in a search worker::

    from presso.compress import (TeacherCache, collect_calibration, compress_,
                                 load_compressed, save_compressed)

    stats = collect_calibration(dense, ids)        # once per worker (Wanda statistics)
    teacher = TeacherCache.build(dense, ids)       # once per worker (recovery distillation)
    model = copy.deepcopy(dense)                   # per trial
    result = compress_(model, plan, calibration=stats, teacher=teacher)
    result.size.size_fraction, result.timings, teacher.divergence(model)

See ``presso/compress/README.md`` for the techniques and the on-disk format.
"""

from presso.compress._calibration import CalibrationStats, TeacherCache, collect_calibration
from presso.compress._kl import KL_TAIL_LOG_FLOOR, gather_with_tail, topk_kl, topk_with_tail
from presso.compress._compress import CompressedModule, CompressionResult, compress_, mark_dense, validate_plan
from presso.compress._estimate import (WeightErrors, adapter_free_nbytes, fixed_nbytes, format_errors,
                                       stored_weight_bytes, weighted_errors)
from presso.compress._formats import FormatCache, block_size, fits, ggml_lib_dir, row_nbytes
from presso.compress._kernels import kernel_view
from presso.compress._modules import compressible_modules, embedding_modules, target_modules
from presso.compress._pack import pack_bits, packed_nbytes, unpack_bits
from presso.compress._quant import dequantize, quantize
from presso.compress._save import LoadedCompressed, SavedReport, load_compressed, save_compressed
from presso.compress._size import (WEIGHTS_FILE, ModuleSize, SizeReport, TensorSpec, dense_nbytes, predict_size,
                                   safetensors_header_bytes, unique_state)

__all__ = [
    "KL_TAIL_LOG_FLOOR",
    "WEIGHTS_FILE",
    "CalibrationStats",
    "CompressedModule",
    "CompressionResult",
    "FormatCache",
    "LoadedCompressed",
    "ModuleSize",
    "SavedReport",
    "SizeReport",
    "TeacherCache",
    "TensorSpec",
    "WeightErrors",
    "adapter_free_nbytes",
    "block_size",
    "collect_calibration",
    "compress_",
    "compressible_modules",
    "dense_nbytes",
    "dequantize",
    "embedding_modules",
    "fits",
    "fixed_nbytes",
    "format_errors",
    "gather_with_tail",
    "ggml_lib_dir",
    "kernel_view",
    "load_compressed",
    "mark_dense",
    "pack_bits",
    "packed_nbytes",
    "predict_size",
    "quantize",
    "row_nbytes",
    "safetensors_header_bytes",
    "save_compressed",
    "stored_weight_bytes",
    "target_modules",
    "topk_kl",
    "topk_with_tail",
    "unique_state",
    "unpack_bits",
    "validate_plan",
    "weighted_errors",
]
