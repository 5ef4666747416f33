"""`import --format hf-llm`: a transformers Llama / Qwen3 folder becomes this package's LLM run, computing the same
logits; what the decoder cannot express is refused with the reason."""
from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

from minimind_v.cli import main
from minimind_v.config import IMAGE_TOKEN
from minimind_v.interop.hf_import import llm_config_of
from minimind_v.train.lm_only import load_llm_run


def _plain_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with no image token (as SmolLM2's or Llama's)."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(["the red square is small and the blue circle is large"] * 50, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_an_hf_llm_imports_with_the_same_logits(arch, tmp_path):
    torch.manual_seed(0)
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0,
                  tie_word_embeddings=arch == "qwen3")
    model = {"llama": lambda: LlamaForCausalLM(LlamaConfig(**common)),
             "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**common)),
             "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(head_dim=16, **common))}[arch]()
    with torch.no_grad():  # biases are zero at init: give Qwen2's q/k/v biases values worth checking
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.normal_(0, 0.5)
    src = tmp_path / "hf"
    model.save_pretrained(src)
    _plain_tokenizer(290).save_pretrained(src)
    assert main(["import", "--format", "hf-llm", "--weights", str(src), "--out", str(tmp_path / "run")]) == 0
    ours, tok = load_llm_run(tmp_path / "run")
    assert IMAGE_TOKEN in tok.get_added_vocab() and ours.llm.cfg.qk_norm == (arch == "qwen3")
    assert ours.llm.cfg.qkv_bias == (arch == "qwen2")
    ids = torch.randint(0, 290, (2, 17))
    with torch.no_grad():
        want = model(ids).logits[..., :290]  # the tokenizer's own tokens (290 is the added image token's row)
        got = ours.llm(ids).logits[..., :290]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # and back: export --llm-only gives the same architecture with the same logits
    assert main(["export", "--llm-only", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "back")]) == 0
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert type(back).__name__ == type(model).__name__
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits[..., :290], want, atol=1e-4, rtol=1e-4)
    new_row = ours.llm.embed_tokens.weight[tok.convert_tokens_to_ids(IMAGE_TOKEN)]
    torch.testing.assert_close(new_row, model.get_input_embeddings().weight.mean(0))  # the mean, not noise


@pytest.mark.parametrize("change, reason", [
    ({"use_sliding_window": True}, "sliding-window"),
    ({"model_type": "gpt2"}, "not importable"),
    ({"head_dim": 128}, "head_dim 128 is not hidden_size / num_attention_heads"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling"),
    ({"attention_bias": True}, "biases"),
])
def test_what_does_not_fit_is_refused_with_the_reason(change, reason):
    hf = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
          "intermediate_size": 96, "vocab_size": 300}
    with pytest.raises(ValueError, match=reason):
        llm_config_of({**hf, **change})


def test_a_folder_without_config_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["import", "--format", "hf-llm", "--weights", str(tmp_path / "x"), "--out", str(tmp_path / "o")]) != 0
    assert "has no config.json" in capsys.readouterr().err
    json.dumps({})


def test_hf_llm_to_vlm_to_transformers(tmp_path):
    """The lineage end to end: a transformers LLM -> import -> VLM pretrain -> export -> transformers answers with the
    package's greedy tokens."""
    from PIL import Image
    from transformers import AutoModelForCausalLM, AutoProcessor

    import minimind_v
    from minimind_v.data.synthetic import synthetic_rows, write_jsonl, write_tiny_encoder
    from minimind_v.data.tokenizer import train_tokenizer

    torch.manual_seed(1)
    src = tmp_path / "hf"
    tok = train_tokenizer(["What is in the picture? A red square and a small blue circle."] * 40, vocab_size=300)
    LlamaForCausalLM(LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                 tie_word_embeddings=True)).save_pretrained(src)
    tok.save_pretrained(src)
    assert main(["import", "--format", "hf-llm", "--weights", str(src), "--out", str(tmp_path / "llm")]) == 0
    write_tiny_encoder("siglip", tmp_path / "enc", image_size=32, patch_size=8)
    rows, _ = synthetic_rows(4, seed=2)
    for r in rows:
        r["conversations"] = [{"role": "user", "content": "<image>\nWhat is in the picture?"},
                              {"role": "assistant", "content": "A red square."}]
    write_jsonl(rows, tmp_path / "d.jsonl", tmp_path / "im")
    assert main(["train", "pretrain", "--from-llm", str(tmp_path / "llm"), "--vision-path", str(tmp_path / "enc"),
                 "--data", str(tmp_path / "d.jsonl"), "--images", str(tmp_path / "im"), "--out", str(tmp_path / "vlm"),
                 "--steps", "12", "--batch-size", "4", "--max-len", "200", "--lr", "1e-2", "--freeze-llm", "0",
                 "--workers", "0",
                 "--device", "cpu", "--dtype", "fp32"]) == 0
    assert main(["export", "--model", str(tmp_path / "vlm"), "--out", str(tmp_path / "export")]) == 0
    image, question = Image.new("RGB", (32, 32), (200, 40, 40)), "<image>\nWhat is in the picture?"
    ours = minimind_v.load(str(tmp_path / "vlm"), device="cpu").answer([image], question, max_new_tokens=6)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "export", trust_remote_code=True).eval()
    proc = AutoProcessor.from_pretrained(tmp_path / "export", trust_remote_code=True)
    text = proc.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                              add_generation_prompt=True)
    batch = proc(text=text, images=[image])
    with torch.no_grad():
        out = hf.generate(**batch, max_new_tokens=6, do_sample=False)
    theirs = proc.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert ours.strip() and theirs.strip() == ours.strip()  # the same words, not two empty answers
