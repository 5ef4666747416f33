"""Half-precision weight storage: what it stores, how close its answers stay, and how it is loaded."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn as nn
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file

from minimind_v.cli import main
from minimind_v.config import LLMConfig, VisionConfig, VLMConfig
from minimind_v.data.tokenizer import train_tokenizer
import minimind_v.model.half as half_module
from minimind_v.model.checkpoint import load_run, save_run
from minimind_v.model.half import HalfEmbedding, HalfLinear, Int8Linear, empty_model, quantize_int8, store_weights
from minimind_v.model.llm import MiniMindLM
from minimind_v.model.stream_load import stream_tensors
from minimind_v.model.vit_light import LightViT
from minimind_v.model.vlm import MiniMindVLM

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


def test_empty_model_skips_initialisers_on_meta_only_and_only_in_its_thread():
    built: dict[str, nn.Module] = {}
    inside, finished = threading.Event(), threading.Event()

    def other_thread() -> None:  # builds a module while the main thread is inside empty_model()
        inside.wait()
        built["linear"] = nn.Linear(64, 64)
        finished.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with empty_model():
        m = nn.Embedding(10, 4)
        inside.set()
        finished.wait(10)
    worker.join()
    assert m.weight.device.type == "meta"
    lin = built["linear"].weight.detach()
    assert lin.device.type == "cpu" and 0.01 < float(lin.std()) < 0.2  # kaiming-uniform, not raw memory
    assert float(nn.Linear(64, 64).weight.detach().std()) > 0.01  # and initialisers work again afterwards


def test_empty_model_never_imports_what_meta_initialisation_would():
    code = ("import sys, torch.nn as nn\n"
            "from minimind_v.model.half import empty_model\n"
            "before = set(sys.modules)\n"
            "with empty_model():\n    nn.Embedding(10, 4); nn.Linear(4, 4); nn.LayerNorm(4)\n"
            "print('sympy' in set(sys.modules) - before)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # torch.device("meta") alone pulls in sympy and ~800 modules (70 MB)


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


@pytest.mark.parametrize("weights,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_load_run_in_half_matches_float32_within_rounding(tiny_run, weights, dtype):
    full, tok = load_run(tiny_run)
    half, _ = load_run(tiny_run, weights=weights)
    assert half.llm.layers[0].attn.q_proj.weight.dtype == dtype
    assert half.llm.norm.weight.dtype == torch.float32
    assert any(isinstance(m, HalfLinear) for m in half.vision.tower.modules())  # the scratch encoder too
    ids = torch.tensor([[1] * 4 + [half.cfg.image_token_id] * half.tokens_per_image + [5, 6, 7]])
    px = half.vision.preprocess([Image.new("RGB", (40, 30), "red")])
    with torch.inference_mode():
        a, b = full(ids, px).logits, half(ids, px).logits
    assert 0 < _rel(b, a) < 0.03
    with pytest.raises(ValueError, match="must be one of fp32, bf16, fp16, int8"):
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
    for weights in ("bf16", "int8"):
        assert main(["ask", "--model", str(tiny_run), "--image", str(img), "--weights", weights,
                     "--max-new-tokens", "3", "What is it?"]) == 0
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


def test_upcast_in_blocks_equals_one_product(monkeypatch):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Linear(16, 40), nn.Linear(16, 40))
    half, int8 = store_weights(nn.Sequential(seq[0]), torch.bfloat16)[0], store_weights(nn.Sequential(seq[1]), torch.int8)[0]
    x = torch.randn(7, 16)
    whole = (half(x), int8(x))
    monkeypatch.setattr(half_module, "UPCAST_CHUNK", 16 * 6)  # 6 rows of the weight at a time: 7 blocks
    blocks = (half(x), int8(x))
    for a, b in zip(whole, blocks):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(whole[1], torch.nn.functional.linear(x, int8.weight.float() * int8.scale, int8.bias))


def test_int8_keeps_tied_linears_tied_and_half_linear_takes_half_inputs():
    shared = nn.Linear(8, 8)
    pair = nn.Sequential(shared, nn.Linear(8, 8))
    pair[1].weight = shared.weight
    store_weights(pair, torch.int8)
    assert pair[0].weight is pair[1].weight and pair[0].scale is pair[1].scale
    lin = store_weights(nn.Sequential(nn.Linear(8, 4)), torch.bfloat16)[0]
    assert lin(torch.randn(3, 8).bfloat16()).dtype == torch.bfloat16  # bias follows the weight's dtype


def test_int8_encoder_loads_for_a_run_whose_encoder_was_not_frozen(siglip_run, tmp_path):
    import shutil

    run = tmp_path / "unfrozen"
    shutil.copytree(siglip_run, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["vision"]["freeze"] = False
    (run / "config.json").write_text(json.dumps(cfg))
    model, _ = load_run(run, weights="bf16", encoder_weights="int8")
    assert not any(p.requires_grad for p in model.vision.parameters())


def _int8_pair(inner: int, out: int = 70) -> tuple[Int8Linear, torch.Tensor]:
    torch.manual_seed(0)
    lin = store_weights(nn.Sequential(nn.Linear(inner, out)), torch.int8)[0]
    return lin, lin.weight.float() * lin.scale  # the weight it stands for


@pytest.mark.skipif(half_module._INT8_KERNEL is None, reason="this torch has no _weight_int8pack_mm")
def test_int8_decoding_rows_take_the_int8_kernel_and_match_the_dequantized_product(monkeypatch):
    calls = []
    kernel = half_module._INT8_KERNEL
    monkeypatch.setattr(half_module, "_INT8_KERNEL", lambda *a: calls.append(a[0].shape) or kernel(*a))
    lin, w = _int8_pair(128)
    for shape in [(1, 128), (2, 1, 128), (half_module.INT8_KERNEL_MAX_ROWS, 128)]:  # a row, a batch of 2, the limit
        x = torch.randn(shape)
        with torch.inference_mode():
            y = lin(x)
        assert y.shape == (*shape[:-1], 70) and y.dtype == torch.float32
        assert _rel(y, torch.nn.functional.linear(x, w, lin.bias)) < 0.01  # bf16 activations: within rounding
    assert [tuple(c) for c in calls] == [(1, 128), (2, 128), (half_module.INT8_KERNEL_MAX_ROWS, 128)]
    calls.clear()
    x = torch.randn(half_module.INT8_KERNEL_MAX_ROWS + 1, 128)  # prefill-sized: the float32 product, exact
    torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, w, lin.bias))
    assert calls == []


def test_int8_kernel_is_never_given_an_inner_size_it_would_read_past(monkeypatch):
    monkeypatch.setattr(half_module, "_INT8_KERNEL", lambda *a: pytest.fail("kernel called"))
    lin, w = _int8_pair(72)  # 72 is not a multiple of the widest vector: the kernel would read past each row
    x = torch.randn(1, 72)
    with torch.inference_mode():
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, w, lin.bias))
    lin, w = _int8_pair(128)
    x = torch.randn(1, 128, requires_grad=True)  # an input that wants gradients takes the float32 product
    torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, w, lin.bias))


def test_load_run_int8_quantizes_the_llm_and_gives_the_tied_head_its_own_copy(tiny_run):
    full, _ = load_run(tiny_run)
    small, _ = load_run(tiny_run, weights="int8")
    llm = small.llm
    lins = [m for m in llm.modules() if isinstance(m, Int8Linear)]
    assert len(lins) == sum(isinstance(m, nn.Linear) for m in full.llm.modules())
    assert llm.embed_tokens.weight.dtype == torch.float32 and not llm.embed_tokens.weight.is_meta
    if small.cfg.llm.tie_embeddings:
        q, scale = quantize_int8(full.llm.embed_tokens.weight.detach())
        assert torch.equal(llm.lm_head.weight, q) and torch.equal(llm.lm_head.scale, scale)
    ids = torch.tensor([[1] * 4 + [small.cfg.image_token_id] * small.tokens_per_image + [5, 6, 7]])
    px = full.vision.preprocess([Image.new("RGB", (40, 30), "red")])
    with torch.inference_mode():
        a, b = full(ids, px).logits, small(ids, px).logits
        one, one_full = small(ids[:, :1]).logits, full(ids[:, :1]).logits  # one row: the decoding path
    assert 0 < _rel(b, a) < 0.05 and 0 < _rel(one, one_full) < 0.05
