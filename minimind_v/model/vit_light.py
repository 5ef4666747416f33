"""Frozen CLIP / SigLIP vision towers in plain PyTorch, read straight from a transformers model folder.

Why not transformers itself: importing its modeling code costs on the order of 100 MB of resident memory
(it pulls in torch.distributed.tensor, torch._dynamo, sympy and scipy), a large slice of a 0.5 GB budget.
The tower is a textbook ViT and the image processor a resize, a crop and a normalise, so this file redoes
both, matching transformers' outputs, for the checkpoints we load. Anything else (SigLIP2 NaFlex models,
ResNets, weights only in pytorch_model.bin) is left to transformers: load_light_vit returns None for it.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from .half import empty_model, quantize_int8, store_weights
from .stream_load import stream_tensors

# config.json's model_type -> tower kind. "clip" / "siglip" are two-tower folders: vision settings nested.
MODEL_TYPES = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}

# transformers' CLIPVisionConfig / SiglipVisionConfig defaults, for the fields a config.json leaves out.
_VIT_B = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_channels=3,
              image_size=224)
DEFAULTS = {"clip": dict(_VIT_B, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5),
            "siglip": dict(_VIT_B, patch_size=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)}

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),  # what OpenAI trained CLIP with
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # same formula, transformers spells it out in Python
}

OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.scale = n_heads, (dim // n_heads) ** -0.5
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = (p(x).view(n, t, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # every patch sees every patch: no mask
        return self.out_proj(y.transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown hidden_act {act!r}; supported: {', '.join(ACTIVATIONS)}")
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer layer, named as transformers names it so checkpoint keys load unchanged."""

    def __init__(self, c: SimpleNamespace) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.self_attn = Attention(c.hidden_size, c.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.mlp = MLP(c.hidden_size, c.intermediate_size, c.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    """Patches -> tokens, plus a learned position per token. CLIP prepends a class token; SigLIP has none."""

    def __init__(self, c: SimpleNamespace, clip: bool) -> None:
        super().__init__()
        d, p = c.hidden_size, c.patch_size
        self.patch_embedding = nn.Conv2d(c.num_channels, d, kernel_size=p, stride=p, bias=not clip)
        if clip:
            self.class_embedding = nn.Parameter(torch.empty(d))
        self.position_embedding = nn.Embedding((c.image_size // p) ** 2 + clip, d)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [N, grid*grid, d], row-major patches
        if hasattr(self, "class_embedding"):
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        return x + self.position_embedding.weight


class LightViT(nn.Module):
    """The CLIP or SigLIP vision transformer; forward(pixels) equals transformers' `last_hidden_state`.

    CLIP's is taken before `post_layernorm` (kept here so a caller can apply it); SigLIP's includes it.
    """

    def __init__(self, config: SimpleNamespace) -> None:
        super().__init__()
        self.config, c = config, config
        self.is_clip = c.model_type.startswith("clip")
        self.embeddings = Embeddings(c, self.is_clip)
        if self.is_clip:
            self.pre_layrnorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)  # sic: transformers' spelling
        self.encoder = nn.Module()  # a bare container, only so the keys read encoder.layers.N...
        self.encoder.layers = nn.ModuleList(Block(c) for _ in range(c.num_hidden_layers))
        self.post_layernorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if tuple(pixel_values.shape[-2:]) != (size, size):
            raise ValueError(f"input image size {tuple(pixel_values.shape[-2:])} is not the model's {size}x{size}")
        x = self.embeddings(pixel_values.to(self.embeddings.patch_embedding.weight.dtype))
        if self.is_clip:
            x = self.pre_layrnorm(x)
        for layer in self.encoder.layers:
            x = layer(x)
        return x if self.is_clip else self.post_layernorm(x)


def _size_dict(size, square: bool) -> dict | None:
    """transformers' size conventions: an int is a square side (or the shortest edge), a pair is (h, w).
    None for the settings not reproduced here (shortest + longest edge, max height/width)."""
    if isinstance(size, int):
        return {"height": size, "width": size} if square else {"shortest_edge": size}
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return {"height": size[0], "width": size[1]}
    if isinstance(size, dict) and set(size) in ({"shortest_edge"}, {"height", "width"}):
        return dict(size)
    return None


def _to_rgb(im: Image.Image) -> Image.Image:
    # transformers >= 5 lays transparency over white: a transparent pixel is background, and the colour
    # hidden under it is often black or garbage. Images without alpha simply convert.
    if "A" not in im.getbands() and im.info.get("transparency") is None:
        return im.convert("RGB")
    im = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")


class ImagePreprocessor:
    """PIL images -> float32 pixels [N, 3, H, W], as transformers' CLIP / SigLIP image processors make them.

    Same steps, same order, same arithmetic: resize in uint8 with PIL, centre crop, rescale in float64 then
    cast to float32, normalise in float32. Absent keys take the defaults of the processor class for `kind`.
    """

    def __init__(self, cfg: dict, kind: str) -> None:
        clip = kind == "clip"
        get = lambda key, default: default if cfg.get(key) is None else cfg[key]  # a null counts as absent
        self.size = _size_dict(get("size", {"shortest_edge": 224} if clip else {"height": 224, "width": 224}),
                               square=get("default_to_square", False))
        self.crop_size = _size_dict(get("crop_size", {"height": 224, "width": 224} if clip else None), square=True)
        if self.size is None:
            raise ValueError(f"unsupported image processor size {cfg.get('size')!r}")
        self.do_resize, self.do_center_crop = get("do_resize", True), get("do_center_crop", clip)
        self.do_rescale, self.do_normalize = get("do_rescale", True), get("do_normalize", True)
        self.resample, self.rescale_factor = int(get("resample", 3)), get("rescale_factor", 1 / 255)
        self.mean = np.array(get("image_mean", OPENAI_CLIP_MEAN if clip else [0.5] * 3), dtype=np.float32)
        self.std = np.array(get("image_std", OPENAI_CLIP_STD if clip else [0.5] * 3), dtype=np.float32)
        if self.do_center_crop and self.crop_size is None:
            raise ValueError(f"unsupported crop_size {cfg.get('crop_size')!r}")

    def _resized_hw(self, h: int, w: int) -> tuple[int, int]:
        if "height" in self.size:
            return self.size["height"], self.size["width"]
        s = self.size["shortest_edge"]
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(s * long / short)  # truncated, not rounded: transformers copies torchvision here
        return (new_long, s) if w <= h else (s, new_long)

    def _one(self, im: Image.Image) -> np.ndarray:
        im = _to_rgb(im)
        if self.do_resize:
            h, w = self._resized_hw(im.height, im.width)
            im = im.resize((w, h), resample=self.resample)
        x = np.asarray(im).transpose(2, 0, 1)  # [3, H, W] uint8
        if self.do_center_crop:
            x = _center_crop(x, self.crop_size["height"], self.crop_size["width"])
        x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32) if self.do_rescale else x.astype(np.float32)
        if self.do_normalize:
            x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        return x

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self._one(im) for im in images]))


def _center_crop(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Crop [C, H, W] to h x w around the centre; the odd pixel goes to the bottom / right. An image smaller
    than the crop is padded with zeros first, the odd pad row / column going on top / left (as transformers)."""
    ph, pw = max(h - x.shape[1], 0), max(w - x.shape[2], 0)
    if ph or pw:
        x = np.pad(x, ((0, 0), ((ph + 1) // 2, ph // 2), ((pw + 1) // 2, pw // 2)))
    top, left = (x.shape[1] - h) // 2, (x.shape[2] - w) // 2
    return x[:, top:top + h, left:left + w]


def _weight_files(path: Path) -> list[Path] | None:
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return None


def load_light_vit(path: str | Path, weight_dtype: torch.dtype | None = None
                   ) -> tuple[LightViT, ImagePreprocessor] | None:
    """The vision tower and image processor of a CLIP / SigLIP folder, or None if transformers is needed.

    Weights are read one tensor at a time into a module built on the meta device, so no float32 copy of the
    whole model ever exists; with `weight_dtype` (bf16 / fp16) the Linear weights are cast as they are read.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"vision encoder folder {str(path)!r} has no config.json")
    cfg = json.loads((path / "config.json").read_text())
    kind, files = MODEL_TYPES.get(cfg.get("model_type")), _weight_files(path)
    if kind is None or files is None:
        return None
    two_tower = cfg["model_type"] in ("clip", "siglip")
    # CLIPConfig still honours the pre-2023 `vision_config_dict`, over `vision_config`.
    vcfg = {**(cfg.get("vision_config") or {}), **(cfg.get("vision_config_dict") or {})} if two_tower else cfg
    config = SimpleNamespace(**{**DEFAULTS[kind], **vcfg, "model_type": f"{kind}_vision_model"})

    proc_file = path / "preprocessor_config.json"
    if not proc_file.is_file():
        raise FileNotFoundError(f"vision encoder folder {str(path)!r} has no preprocessor_config.json")
    proc_cfg = json.loads(proc_file.read_text())
    size = proc_cfg.get("size")
    if size is not None and _size_dict(size, square=bool(proc_cfg.get("default_to_square"))) is None:
        return None  # a resize rule not reproduced here: transformers' processor will do it
    if not isinstance(proc_cfg.get("resample", 3), int):
        return None  # a filter given by name: likewise
    processor = ImagePreprocessor(proc_cfg, kind)

    with empty_model():
        tower = LightViT(config)
    if weight_dtype is not None and weight_dtype != torch.float32:
        store_weights(tower, weight_dtype, embeddings=False)
    wanted = tower.state_dict()  # meta tensors: the names, shapes and dtypes to load into
    state: dict[str, torch.Tensor] = {}
    for file in files:
        # Two-tower folders and older single-tower saves prefix the tower with `vision_model.`; transformers
        # >= 5 saves a lone tower bare. Text tower, projections, SigLIP's pooling head and position_ids
        # buffers match no wanted name and are never read.
        def target(key: str) -> torch.dtype | None:
            name = key.removeprefix("vision_model.") if key.startswith("vision_model.") or not two_tower else None
            if name not in wanted or name in state:
                return None
            return torch.float32 if wanted[name].dtype == torch.int8 else wanted[name].dtype  # int8: quantized below

        for key, t in stream_tensors(file, target):
            name = key.removeprefix("vision_model.")
            if t.shape != wanted[name].shape:
                raise ValueError(f"weight {key!r} has shape {tuple(t.shape)}, expected {tuple(wanted[name].shape)}")
            if wanted[name].dtype == torch.int8:  # an Int8Linear: its weight and per-row scale
                state[name], state[name.removesuffix("weight") + "scale"] = quantize_int8(t)
            else:
                state[name] = t
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ValueError(f"{path}: vision weight {missing[0]!r} missing from the checkpoint ({len(missing)} missing)")
    tower.load_state_dict(state, strict=True, assign=True)
    return tower.eval().requires_grad_(False), processor
