"""The plain-PyTorch CLIP / SigLIP towers and image processors match transformers' on tiny random models."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from minimind_v.model.half import HalfLinear
from minimind_v.model.vit_light import ImagePreprocessor, LightViT, load_light_vit

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
            patch_size=8)
CLIP_PROC = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
SIGLIP_PROC = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor


def _quiet_save(model, out: Path, **kw) -> Path:
    model.save_pretrained(out, **kw)
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> tuple[Path, transformers.CLIPVisionModel]:
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY, hidden_act="quick_gelu")).eval()
    out = _quiet_save(model, tmp_path_factory.mktemp("clip"))
    CLIP_PROC(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out, model


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> tuple[Path, transformers.SiglipVisionModel]:
    torch.manual_seed(1)
    cfg = transformers.SiglipVisionConfig(**TINY, hidden_act="gelu_pytorch_tanh", vision_use_head=True)
    model = transformers.SiglipVisionModel(cfg).eval()
    out = _quiet_save(model, tmp_path_factory.mktemp("siglip"))
    SIGLIP_PROC(size={"height": 32, "width": 32}, resample=2).save_pretrained(out)
    return out, model


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_clip_vision_model_matches(clip_dir):
    path, ref = clip_dir
    tower, proc = load_light_vit(path)
    assert isinstance(tower, LightViT) and isinstance(proc, ImagePreprocessor)
    assert (tower.config.hidden_size, tower.config.image_size, tower.config.patch_size) == (32, 32, 8)
    assert tower.config.num_hidden_layers == 2 and tower.config.model_type == "clip_vision_model"
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())
    assert set(tower.state_dict()) == set(ref.state_dict()) - {"embeddings.position_ids"}
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = ref(pixel_values=pixels).last_hidden_state, tower(pixels)
        assert got.shape == (2, 1 + 16, 32)
        assert _max_diff(got, want) < 1e-5
        assert _max_diff(tower.post_layernorm(got), ref.post_layernorm(want)) < 1e-5
    with pytest.raises(ValueError, match="image size"):
        tower(torch.randn(1, 3, 16, 16))


def test_legacy_prefixed_checkpoint_loads(clip_dir, tmp_path):
    """transformers 4 saved a lone CLIPVisionModel as `vision_model.*`, often with a position_ids buffer."""
    path, ref = clip_dir
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / name).write_text((path / name).read_text())
    state = {f"vision_model.{k}": v.contiguous() for k, v in ref.state_dict().items() if "position_ids" not in k}
    state["vision_model.embeddings.position_ids"] = torch.arange(17).unsqueeze(0)
    save_file(state, str(tmp_path / "model.safetensors"))
    tower, _ = load_light_vit(tmp_path)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(tower(pixels), ref(pixel_values=pixels).last_hidden_state) < 1e-5


def test_full_clip_model_folder_reads_only_the_vision_tower(tmp_path):
    torch.manual_seed(2)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=dict(TINY, hidden_act="gelu"), projection_dim=8)
    ref = transformers.CLIPModel(cfg).eval()
    _quiet_save(ref, tmp_path, max_shard_size="20KB")  # sharded: index + several files
    CLIP_PROC(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert any(k.startswith("text_model.") for k in weight_map) and "logit_scale" in weight_map

    tower, _ = load_light_vit(tmp_path)
    assert tower.config.hidden_act == "gelu" and tower.config.model_type == "clip_vision_model"
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ref.vision_model(pixel_values=pixels).last_hidden_state
        assert _max_diff(tower(pixels), want) < 1e-5


def test_siglip_vision_model_matches_and_skips_head(siglip_dir):
    path, ref = siglip_dir
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        assert any(".head." in k or k.startswith("head.") for k in f.keys())  # the head is in the folder...
    tower, _ = load_light_vit(path)
    assert not any("head" in k for k in tower.state_dict())  # ...but not loaded
    assert not hasattr(tower.embeddings, "class_embedding") and tower.embeddings.patch_embedding.bias is not None
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got, want = tower(pixels), ref(pixel_values=pixels).last_hidden_state
    assert got.shape == (2, 16, 32)
    assert _max_diff(got, want) < 1e-5


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    u8 = lambda *shape: rng.integers(0, 256, shape, dtype=np.uint8)
    return [
        Image.fromarray(u8(53, 37, 3), "RGB"),     # 37 wide x 53 high: portrait, odd crop offsets
        Image.fromarray(u8(40, 64, 4), "RGBA"),    # landscape, random transparency
        Image.fromarray(u8(100, 100), "L"),        # grayscale square
        Image.fromarray(u8(9, 13, 3), "RGB"),      # smaller than the target: upsampled
    ]


@pytest.mark.parametrize("kind,cfg", [
    ("clip", {"size": {"shortest_edge": 25}, "crop_size": {"height": 20, "width": 20}, "resample": 3}),
    ("clip", {"size": 24, "crop_size": 21, "do_center_crop": True, "resample": 3}),  # pre-2023 integer sizes
    ("clip", {"size": {"shortest_edge": 16}, "crop_size": {"height": 20, "width": 18}}),  # crop > image: pads
    ("siglip", {"size": {"height": 24, "width": 30}, "resample": 2, "image_mean": [0.5] * 3,
                "image_std": [0.5] * 3}),
    ("siglip", {"size": {"height": 16, "width": 16}}),  # every other key from SigLIP's class defaults
])
def test_preprocessing_matches_transformers(tmp_path, kind, cfg):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    ref = (CLIP_PROC if kind == "clip" else SIGLIP_PROC).from_pretrained(tmp_path)
    images = _images()
    want = torch.as_tensor(np.stack(ref(images=images, return_tensors="np")["pixel_values"]))
    got = ImagePreprocessor(cfg, kind)(images)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.equal(got, want)  # same PIL resize, same float64 rescale, same float32 normalise: bit-exact


def test_bf16_weights_stay_close_to_float32(siglip_dir, clip_dir):
    for path, _ in (siglip_dir, clip_dir):
        full, _ = load_light_vit(path)
        half, _ = load_light_vit(path, weight_dtype=torch.bfloat16)
        fc1 = half.encoder.layers[0].mlp.fc1
        assert isinstance(fc1, HalfLinear) and fc1.weight.dtype == torch.bfloat16 and fc1.bias.dtype == torch.float32
        assert half.encoder.layers[1].self_attn.q_proj.weight.dtype == torch.bfloat16
        for norm in (half.post_layernorm, half.encoder.layers[0].layer_norm1):
            assert norm.weight.dtype == torch.float32
        assert half.embeddings.patch_embedding.weight.dtype == torch.float32
        assert half.embeddings.position_embedding.weight.dtype == torch.float32
        pixels = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            a, b = full(pixels), half(pixels)
        assert b.dtype == torch.float32
        assert 0 < (a - b).norm() / a.norm() < 0.02  # rounded (so really bf16), yet close


def test_unsupported_folders_return_none_and_missing_files_raise(tmp_path, siglip_dir):
    torch.manual_seed(3)
    model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY))
    bin_dir = tmp_path / "bin"
    model.save_pretrained(bin_dir, safe_serialization=False)  # transformers 5 ignores the flag: safetensors
    if (bin_dir / "model.safetensors").exists():  # so turn it into the .bin-only folder an old save leaves
        (bin_dir / "model.safetensors").unlink()
        torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    assert (bin_dir / "pytorch_model.bin").is_file() and load_light_vit(bin_dir) is None

    for model_type in ("siglip2", "resnet"):  # NaFlex SigLIP2, a CNN: transformers' job
        other = tmp_path / model_type
        other.mkdir()
        (other / "config.json").write_text(json.dumps({"model_type": model_type, "vision_config": {}}))
        save_file({"x": torch.zeros(1)}, str(other / "model.safetensors"))
        assert load_light_vit(other) is None

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_light_vit(tmp_path / "empty")

    # A checkpoint that lacks a weight names it instead of loading garbage.
    path, _ = siglip_dir
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (broken / name).write_text((path / name).read_text())
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys() if "post_layernorm.weight" not in k},
                  str(broken / "model.safetensors"))
    with pytest.raises(ValueError, match="post_layernorm.weight"):
        load_light_vit(broken)

    cfg = json.loads((path / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**cfg, "hidden_act": "swish"}))
    with pytest.raises(ValueError, match="swish"):
        load_light_vit(broken)


def test_loading_imports_no_transformers(siglip_dir):
    path, _ = siglip_dir
    code = ("import sys, torch, PIL.Image; import minimind_v.model.vit_light as v; "
            f"m, p = v.load_light_vit({str(path)!r}); "
            "x = p([PIL.Image.new('RGB', (40, 30))]); assert m(x).shape == (1, 16, 32); "
            "assert 'transformers' not in sys.modules, 'transformers was imported'")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
