"""A real study on a CUDA device: trials compress and score on the GPU, results land in the
store, and a saved model reloads onto the GPU with identical outputs. Skipped without CUDA.

Self-contained on purpose (a byte-level tokenizer trained in-process, text from a file next to
the test or the bundled corpus), so it runs on GPU machines without the built-in model wheels.
"""

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _text_file(tmp_path: Path) -> Path:
    candidate = os.environ.get("PRESSO_GPU_TEXT")
    if candidate and Path(candidate).is_file():
        return Path(candidate)
    from presso.data import load_documents

    path = tmp_path / "text.txt"
    path.write_text("\n".join(load_documents("builtin:lee")))
    return path


def _tiny_llama_with_own_tokenizer(text_path: Path):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(text_path.read_text().splitlines(), trainers.BpeTrainer(vocab_size=512, special_tokens=["<unk>", "<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval(), tokenizer


def test_study_runs_on_cuda(tmp_path):
    import torch

    from presso.compress import load_compressed, save_compressed
    from presso.models import LoadedModel
    from presso.search import EvalConfig, Evaluator, StudyConfig, load_existing_study, run_study, trial_rows

    text = _text_file(tmp_path)
    model, tokenizer = _tiny_llama_with_own_tokenizer(text)
    config = StudyConfig(
        name="gpu", model="tiny:llama", space="builtin:tiny", trials=4, device="cuda",
        storage=f"sqlite:///{tmp_path}/gpu.db", tracking_uri=None, objectives=("ppl_ratio", "size_fraction", "latency_ms"),
        eval=EvalConfig(text=str(text), sequences=4, seq_len=32),
    )
    evaluator = Evaluator(config, loaded=LoadedModel(model, tokenizer, "causal-lm", "tiny-gpu"))
    assert next(evaluator.loaded.model.parameters()).is_cuda
    summary = run_study(config, progress=False, evaluator=evaluator)
    rows = trial_rows(load_existing_study("gpu", config.storage))
    assert summary.counted == 4 and all(r.state == "COMPLETE" for r in rows), [r.failure for r in rows]
    assert all(r.values["latency_ms"] > 0 for r in rows)

    from presso.plan import plan_from_dict

    plan = plan_from_dict(rows[0].plan)
    compressed, result = evaluator.assets.compress(plan)
    assert next(compressed.parameters()).is_cuda
    saved = save_compressed(compressed, result, tokenizer, tmp_path / "saved")
    assert saved.on_disk_bytes == saved.predicted_bytes
    reloaded, _, _ = load_compressed(tmp_path / "saved", device="cuda")
    ids = evaluator.text.eval_ids[:2].cuda()
    with torch.inference_mode():
        assert torch.equal(compressed(ids).logits, reloaded(ids).logits)
