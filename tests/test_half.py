"""Half-precision weight storage: what it stores, how close its answers stay, and how it is loaded."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

from minimind_v.cli import main
from minimind_v.config import LLMConfig, VisionConfig, VLMConfig
from minimind_v.data.tokenizer import train_tokenizer
from minimind_v.model.half import HalfEmbedding, HalfLinear, Int8Linear, empty_model, quantize_int8, store_weights
from minimind_v.model.llm import MiniMindLM
from minimind_v.model.stream_load import stream_tensors
from minimind_v.model.vit_light import LightViT
from minimind_v.model.vlm import MiniMindVLM
from minimind_v.train.checkpoint import load_run, save_run

LLM = LLMConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=300, max_seq_len=128)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_half_linear_takes_the_half_path_for_one_row_and_float32_for_many():
    torch.manual_seed(0)
    lin = nn.Linear(48, 40)
    half = store_weights(nn.Sequential(lin), torch.bfloat16)[0]
    assert isinstance(half, HalfLinear) and half.weight.dtype == torch.bfloat16 and half.bias.dtype == torch.float32
    w = half.weight.float()
    for rows in (1, 5):
        x = torch.randn(rows, 48)
        y = half(x)
        assert y.dtype == torch.float32
        exact = torch.nn.functional.linear(x, w, half.bias)  # the rounded weight in float32 arithmetic
        if rows == 1:  # bf16 arithmetic: within bf16 rounding of the exact product
            assert 0 < _rel(y, exact) < 1e-2
        else:  # the weight is cast up: float32 arithmetic on the rounded weight, exactly
            torch.testing.assert_close(y, exact)
    with pytest.raises(ValueError, match="torch.float16 or torch.int8"):
        store_weights(nn.Sequential(nn.Linear(2, 2)), torch.float32)


def test_llm_in_half_keeps_ties_halves_bytes_and_stays_close():
    torch.manual_seed(0)
    model = MiniMindLM(LLM).eval()
    ids = torch.randint(0, 300, (2, 20))
    with torch.inference_mode():
        ref = model(ids).logits
    before = sum(p.numel() * p.element_size() for p in model.parameters())
    store_weights(model, torch.bfloat16)
    assert isinstance(model.embed_tokens, HalfEmbedding) and isinstance(model.lm_head, HalfLinear)
    assert model.lm_head.weight is model.embed_tokens.weight  # still tied: converted once
    after = sum(p.numel() * p.element_size() for p in model.parameters())
    assert after < 0.55 * before
    assert model.new_cache(1, 8).k[0].dtype == torch.float32  # activations and cache stay float32
    with torch.inference_mode():
        got = model(ids).logits
        cache = model.new_cache(2, 21)
        model(ids, cache=cache)
        step = model(ids[:, :1], cache=cache, logits_to_keep=1).logits  # one row per sequence: the bf16 path
    assert got.dtype == torch.float32 and 0 < _rel(got, ref) < 0.02
    assert torch.isfinite(step).all()


def test_empty_model_builds_on_meta_and_restores_the_initialisers():
    init = nn.init.normal_
    with pytest.raises(RuntimeError, match="boom"):
        with empty_model():
            m = nn.Embedding(10, 4)
            assert m.weight.device.type == "meta" and nn.init.normal_ is not init
            raise RuntimeError("boom")
    assert nn.init.normal_ is init
    assert nn.Embedding(3, 2).weight.device.type == "cpu"


def test_stream_tensors_matches_safetensors_and_converts(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(6).view(2, 3), "c": torch.randn(5).bfloat16(),
               "empty": torch.zeros(0, 4), "skip": torch.ones(2)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    target = {"a": torch.bfloat16, "b": torch.int64, "c": torch.float32, "empty": torch.float32}
    got = dict(stream_tensors(path, target.get))
    assert set(got) == set(target)  # "skip" is never read
    ref = load_file(str(path))
    for k, dt in target.items():
        assert got[k].dtype == dt and got[k].shape == ref[k].shape
        torch.testing.assert_close(got[k], ref[k].to(dt))
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        list(stream_tensors(truncated, lambda k: torch.float32))


def test_load_run_in_bf16_matches_float32_within_rounding(tiny_run):
    full, tok = load_run(tiny_run)
    half, _ = load_run(tiny_run, weights="bf16")
    assert half.llm.layers[0].attn.q_proj.weight.dtype == torch.bfloat16
    assert half.llm.norm.weight.dtype == torch.float32
    assert any(isinstance(m, HalfLinear) for m in half.vision.tower.modules())  # the scratch encoder too
    ids = torch.tensor([[1] * 4 + [half.cfg.image_token_id] * half.tokens_per_image + [5, 6, 7]])
    px = half.vision.preprocess([Image.new("RGB", (40, 30), "red")])
    with torch.inference_mode():
        a, b = full(ids, px).logits, half(ids, px).logits
    assert 0 < _rel(b, a) < 0.03
    with pytest.raises(ValueError, match="fp32, bf16 or fp16"):
        load_run(tiny_run, weights="int3")


@pytest.fixture(scope="module")
def siglip_run(tmp_path_factory):
    """A tiny VLM on a pretrained-style SigLIP folder (saved by transformers), as a run directory."""
    root = tmp_path_factory.mktemp("siglip_run")
    torch.manual_seed(0)
    vcfg = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=32, patch_size=8)
    transformers.SiglipVisionModel(vcfg).save_pretrained(root / "ve")
    proc = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    proc(size={"height": 32, "width": 32}).save_pretrained(root / "ve")
    tok = train_tokenizer(["Describe the image.", "A red circle and a blue square."] * 20, vocab_size=290)
    cfg = VLMConfig(llm=LLM, vision=VisionConfig(kind="siglip", path=str(root / "ve")),
                    image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"))
    return save_run(MiniMindVLM(cfg).eval(), tok, root / "run")


def test_pretrained_encoder_in_bf16_goes_through_the_light_tower(siglip_run):
    full, tok = load_run(siglip_run)
    half, _ = load_run(siglip_run, weights="bf16")
    assert not isinstance(full.vision.tower, LightViT) and isinstance(half.vision.tower, LightViT)
    image = Image.new("RGB", (50, 37), (200, 30, 90))
    px_full, px_half = full.vision.preprocess([image]), half.vision.preprocess([image])
    torch.testing.assert_close(px_half, px_full)  # the light preprocessor is transformers' to the bit
    text = [i for i in range(20, 30) if i != half.cfg.image_token_id][:4]
    ids = torch.tensor([text[:2] + [half.cfg.image_token_id] * half.tokens_per_image + text[2:]])
    with torch.inference_mode():
        a, b = full(ids, px_full).logits, half(ids, px_half).logits
    assert 0 < _rel(b, a) < 0.03


def test_cli_ask_and_bench_take_half_weights(tiny_run, tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32), "blue").save(img)
    assert main(["ask", "--model", str(tiny_run), "--image", str(img), "--weights", "bf16", "--max-new-tokens", "3",
                 "What is it?"]) == 0
    capsys.readouterr()
    out = tmp_path / "b.json"
    assert main(["bench", "--model", str(tiny_run), "--only", "decode", "--dtype", "fp32", "--weights", "fp32",
                 "--weights", "bf16", "--rss", "--decode-tokens", "3", "--decode-batch", "2", "--repeats", "1",
                 "--peak-tflops", "0.05", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["decode"]) == {"fp32", "bf16_weights"}
    assert res["decode"]["bf16_weights"]["batch1"]["decode_tokens_per_s"]["median"] > 0
    rss = res["inference_rss"]
    assert set(rss) == {"fp32", "bf16"} and all(r["peak_rss_mb"] > 100 for r in rss.values())
    assert rss["bf16"]["peak_after_load_mb"] <= rss["bf16"]["peak_rss_mb"]


def test_quantize_int8_rounds_each_row_to_its_own_scale():
    w = torch.randn(6, 50) * torch.tensor([0.01, 0.1, 1, 10, 100, 1000])[:, None]
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (6, 1)
    assert (q.abs().amax(dim=1) == 127).all()  # every row uses the whole range
    assert ((q.float() * scale - w).abs() <= scale / 2 + 1e-6 * w.abs()).all()  # within half a step


def test_int8_encoder_stores_a_quarter_and_stays_close(siglip_run):
    full, _ = load_run(siglip_run)
    small, _ = load_run(siglip_run, weights="bf16", encoder_weights="int8")
    lins = [m for m in small.vision.tower.modules() if isinstance(m, Int8Linear)]
    assert lins and all(m.weight.dtype == torch.int8 and m.scale.dtype == torch.float32 for m in lins)
    assert small.llm.layers[0].ffn.up.weight.dtype == torch.bfloat16
    fp32_bytes = sum(m.weight.numel() * 4 for m in lins)
    assert sum(m.weight.numel() + m.scale.numel() * 4 for m in lins) < 0.3 * fp32_bytes
    px = full.vision.preprocess([Image.new("RGB", (40, 40), (10, 200, 90))])
    with torch.inference_mode():
        a, b = full.vision(px), small.vision(px)
    assert 0 < _rel(b, a) < 0.03
    with pytest.raises(ValueError, match="encoder weights also int8"):
        load_run(siglip_run, weights="int8")
