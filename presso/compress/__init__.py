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
from presso.compress._compress import CompressedModule, CompressionResult, compress_, validate_plan
from presso.compress._modules import compressible_modules, embedding_modules, target_modules
from presso.compress._pack import pack_bits, packed_nbytes, unpack_bits
from presso.compress._quant import dequantize, quantize
from presso.compress._save import LoadedCompressed, SavedReport, load_compressed, save_compressed
from presso.compress._size import ModuleSize, SizeReport, dense_nbytes, predict_size

__all__ = [
    "KL_TAIL_LOG_FLOOR",
    "CalibrationStats",
    "CompressedModule",
    "CompressionResult",
    "LoadedCompressed",
    "ModuleSize",
    "SavedReport",
    "SizeReport",
    "TeacherCache",
    "collect_calibration",
    "compress_",
    "compressible_modules",
    "dense_nbytes",
    "dequantize",
    "embedding_modules",
    "gather_with_tail",
    "load_compressed",
    "pack_bits",
    "packed_nbytes",
    "predict_size",
    "quantize",
    "save_compressed",
    "target_modules",
    "topk_kl",
    "topk_with_tail",
    "unpack_bits",
    "validate_plan",
]
