"""LoRA: adapters that start at the base model, train alone, save small, load onto their own base only, and merge
into weights that answer exactly as the adapter does."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import build_tiny_run
from minimind_v.cli import main
from minimind_v.config import llm_preset
from minimind_v.data.synthetic import synthetic_rows, write_jsonl
from minimind_v.model.llm import MiniMindLM
from minimind_v.model.lora import LoraConfig, LoRALinear, apply_lora, load_adapter, merge_lora

FAST = ["--workers", "0", "--log-every", "1", "--threads", "1", "--device", "cpu", "--dtype", "fp32"]


def test_a_fresh_adapter_is_the_base_model_and_merging_keeps_its_function():
    torch.manual_seed(0)
    llm = MiniMindLM(llm_preset("shapes-tiny", vocab_size=128))
    ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        before = llm(ids).logits
    trainable = apply_lora(llm, LoraConfig(rank=4, targets=("q", "v", "gate", "down")))
    assert trainable == sum(p.numel() for n, p in llm.named_parameters() if "lora_" in n)
    assert all(not p.requires_grad for n, p in llm.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        assert torch.equal(llm(ids).logits, before)  # B starts at zero
        for m in llm.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(0, 0.05)
        adapted = llm(ids).logits
        assert not torch.allclose(adapted, before)
        assert merge_lora(llm) == 2 * 2 * len(llm.layers)
        assert not any(isinstance(m, LoRALinear) for m in llm.modules())
        torch.testing.assert_close(llm(ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="unknown LoRA targets"):
        LoraConfig(targets=("q", "lm_head"))
    with pytest.raises(ValueError, match="rank 64 is larger than the layer"):
        LoRALinear(nn.Linear(32, 16), rank=64, alpha=16)


def test_a_moe_router_is_never_adapted():
    llm = MiniMindLM(llm_preset("shapes-tiny", vocab_size=128, n_experts=4, moe_ffn_dim=32))
    apply_lora(llm, LoraConfig(rank=2, targets=("gate",)))
    routers = [m for n, m in llm.named_modules() if n.endswith("ffn.gate")]
    assert routers and all(isinstance(r, nn.Linear) for r in routers)
    assert any(isinstance(m, LoRALinear) for m in llm.modules())  # the experts' gates are


def test_train_save_load_merge_and_refuse_another_base(tmp_path, tiny_run):
    rows, _ = synthetic_rows(12, seed=7, words=(2, 6))
    write_jsonl(rows, tmp_path / "d.jsonl", tmp_path / "im")
    out = tmp_path / "adapter"
    assert main(["train", "sft", "--data", str(tmp_path / "d.jsonl"), "--images", str(tmp_path / "im"),
                 "--from", str(tiny_run), "--out", str(out), "--steps", "4", "--batch-size", "4", "--max-len", "300",
                 "--lr", "5e-2", "--lora-rank", "4", "--lora-targets", "q,k,v,o,gate,up,down,projector", *FAST]) == 0
    assert (out / "adapter.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert (out / "adapter.safetensors").stat().st_size < (tiny_run / "model.safetensors").stat().st_size
    assert main(["merge", "--model", str(tiny_run), "--adapter", str(out), "--out", str(tmp_path / "merged")]) == 0
    import minimind_v

    image, q = Image.new("RGB", (32, 32), (30, 160, 60)), "<image>\nDescribe the picture."
    base = minimind_v.load(str(tiny_run), device="cpu")
    adapted = minimind_v.load(str(tiny_run), device="cpu", adapter=str(out))
    merged = minimind_v.load(str(tmp_path / "merged"), device="cpu")
    ids = base.encode_chat([{"role": "user", "content": q}], 1)
    px = base.preprocess([image])
    with torch.no_grad():
        logits = [v.model(torch.tensor([ids]), px).logits for v in (base, adapted, merged)]
    assert not torch.allclose(logits[0], logits[1])  # the adapter learnt something
    torch.testing.assert_close(logits[1], logits[2], atol=1e-5, rtol=1e-5)  # merged == applied at load
    assert adapted.answer([image], q, max_new_tokens=8) == merged.answer([image], q, max_new_tokens=8)
    other = build_tiny_run(tmp_path / "other", seed=1)
    with pytest.raises(ValueError, match="trained on another base model"):
        load_adapter(minimind_v.load(str(other), device="cpu").model, out)


def test_an_adapter_needs_a_complete_model(tmp_path, capsys):
    assert main(["train", "pretrain", "--data", "x.jsonl", "--from-llm", "llm", "--vision-path", "v",
                 "--out", str(tmp_path / "o"), "--lora-rank", "4", *FAST]) != 0
    assert "--lora-rank adapts a complete model" in capsys.readouterr().err


def test_an_llm_adapter_trains_and_merges_into_an_llm_run(tmp_path):
    from conftest import write_tiny_llm_run
    from minimind_v.data.synthetic import write_chat_jsonl
    from minimind_v.train.lm_only import load_llm_run

    base = write_tiny_llm_run(tmp_path / "llm")
    write_chat_jsonl(tmp_path / "chat.jsonl", 16, seed=3)
    assert main(["train", "llm-sft", "--data", str(tmp_path / "chat.jsonl"), "--from", str(base), "--out",
                 str(tmp_path / "ad"), "--steps", "3", "--batch-size", "4", "--lr", "5e-2", "--lora-rank", "2",
                 *FAST]) == 0
    assert main(["merge", "--model", str(base), "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "m")]) == 0
    adapted, tok = load_llm_run(base)
    load_adapter(adapted, tmp_path / "ad")
    merged, _ = load_llm_run(tmp_path / "m")
    plain, _ = load_llm_run(base)
    ids = torch.tensor([tok("the red square is small").input_ids])
    with torch.no_grad():
        a, m, p = (x.llm(ids).logits for x in (adapted, merged, plain))
    torch.testing.assert_close(a, m, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, p)
