"""SparseGPT against magnitude and Wanda pruning on MiniLM-L6, alone and with 4-bit quantization.

Uniform plans over every block Linear (embedding table dense): 50% unstructured or 2:4, at
16 bits (pruning only) or 4 bits g64 (rtn, or gptq: with criterion sparsegpt the layer is
pruned and quantized in one sweep). Quality: 1 - mean cosine similarity of 256 held-out
sentence embeddings (``builtin:lee-heldout``) to the dense model's. Calibration: 128 windows of
64 tokens of ``builtin:lee`` (statistics and Hessians once).

    python benchmarks/sparsegpt.py
"""

import copy
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

torch.set_num_threads(1)
from compress_models import embeddings  # noqa: E402
from presso.compress import collect_calibration, compress_  # noqa: E402
from presso.plan import LayerConfig, Plan, QuantConfig, SparsityConfig  # noqa: E402
from presso.data import load_documents, split_documents, token_batches  # noqa: E402
from presso.models import load_model  # noqa: E402


def main() -> None:
    loaded = load_model("builtin:minilm-l6")
    dense, tok = loaded.model, loaded.tokenizer
    calib_docs, _ = split_documents(load_documents("builtin:lee"))
    heldout = load_documents("builtin:lee-heldout")
    sentences = [s.strip() + "." for d in heldout for s in d.split(". ") if len(s.split()) > 4][:256]
    enc = tok(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        ref = embeddings(dense, enc)
    def quality(m):
        with torch.no_grad():
            return 1.0 - float((embeddings(m, enc) * ref).sum(-1).mean())
    stats = collect_calibration(dense, token_batches(tok, calib_docs, 128, 64), hessians=True)
    print(f"{'sparsity':>8} {'bits':>4} {'criterion':>10} {'method':>6} {'1-cos':>9} {'compress_s':>10}")
    for amount, structure in ((0.5, "unstructured"), (0.0, "2:4")):
        for bits in (16, 4):
            for crit, method in (("magnitude", "rtn"), ("wanda", "rtn"), ("wanda", "gptq"), ("sparsegpt", "rtn"), ("sparsegpt", "gptq")):
                if bits == 16 and method == "gptq":
                    continue
                q = QuantConfig(bits=bits, group_size=64, method=method) if bits < 16 else QuantConfig(bits=16)
                plan = Plan(layers={"re:.*": LayerConfig(sparsity=SparsityConfig(amount=amount, structure=structure), quant=q)}, criterion=crit)
                m = copy.deepcopy(dense)
                t = time.perf_counter()
                r = compress_(m, plan, calibration=stats)
                label = structure if structure != "unstructured" else f"{amount}"
                print(f"{label:>8} {bits:>4} {crit:>10} {method if bits < 16 else '-':>6} {quality(m):>9.5f} {r.timings['total_s']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
