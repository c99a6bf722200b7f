"""GPTQ inside ggml blocks vs ggml rounding on SmolLM2 (issue 12): perplexity on the first 4,096
tokens of lee.cor (16 windows of 256), blocks in IQ4_NL or Q4_0, ffn_down Q4_K, table Q8_0.
Run: OMP_NUM_THREADS=1 python benchmarks/gguf_gptq.py (about 2.5 minutes on one core)."""
import copy, time, math, torch
from presso.models import load_model
from presso.data import load_documents
from presso.compress import collect_calibration, compress_
from presso.plan import LayerConfig, Plan, QuantConfig
t0 = time.time()
lm = load_model("builtin:smollm2-135m"); model, tok = lm.model.eval(), lm.tokenizer
cal_ids = torch.tensor(tok("\n\n".join(load_documents("builtin:lee")))["input_ids"][:16 * 128]).reshape(16, 128)
held = torch.tensor(tok("\n\n".join(load_documents("builtin:lee-heldout")))["input_ids"][:4096]).reshape(16, 256)
def ppl(m):
    nll = 0.0
    with torch.no_grad():
        for row in held.split(4):
            out = m(input_ids=row).logits[:, :-1].float()
            nll += torch.nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), row[:, 1:].reshape(-1), reduction="sum").item()
    return math.exp(nll / (16 * 255))
print("dense", round(ppl(model), 2), f"{time.time()-t0:.0f}s", flush=True)
cal = collect_calibration(model, cal_ids, hessians=True)
print("calib", f"{time.time()-t0:.0f}s", flush=True)
for fmt in ("IQ4_NL", "Q4_0"):
    for method in ("rtn", "gptq"):
        plan = Plan(layers={
            "re:.*mlp.down_proj": LayerConfig(quant=QuantConfig(format="Q4_K")),
            "re:.*self_attn.*_proj": LayerConfig(quant=QuantConfig(format=fmt, method=method)),
            "re:.*mlp.(gate|up)_proj": LayerConfig(quant=QuantConfig(format=fmt, method=method)),
            "model.embed_tokens": LayerConfig(quant=QuantConfig(format="Q8_0")),
        })
        m = copy.deepcopy(model); t = time.time()
        compress_(m, plan, calibration=cal)
        ct = time.time() - t
        print(fmt, method, "ppl", round(ppl(m), 2), f"compress {ct:.0f}s total {time.time()-t0:.0f}s", flush=True)
        del m
