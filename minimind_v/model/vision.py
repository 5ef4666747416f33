"""Vision encoders behind one interface: pixels [N, 3, H, W] -> patch features [N, tokens, dim].

Three kinds share one code path, so the embedded default exercises exactly what real weights use:
  - "clip":    transformers' CLIPVisionModel from a local folder (MiniMind2-V: ViT-B/16, CLS dropped -> 196 x 768)
  - "siglip":  transformers' SiglipVisionModel from a local folder (minimind-3v: SigLIP2 P32, 64 x 768,
               post-layernorm included in its last hidden state)
  - "scratch": a small CLIP vision transformer built from a config and trained here.
  - "cnn":     a small ResNet (transformers' ResNetModel) with coordinate channels, trained here: it learns
               shapes from far fewer images than a vision transformer (the embedded default uses it).
An optional k x k pixel-shuffle merge trades tokens for width (4x fewer tokens at k=2).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from PIL import Image

from ..config import VisionConfig
from ..encoder_files import image_processor_classes


def pixel_shuffle(x: torch.Tensor, k: int) -> torch.Tensor:
    """[N, g*g, C] -> [N, (g/k)^2, C*k*k]: each k x k block of neighbouring patches becomes one token."""
    if k == 1:
        return x
    n, t, c = x.shape
    g = int(round(t ** 0.5))
    if g * g != t or g % k:
        raise ValueError(f"pixel shuffle needs a square grid divisible by {k}; got {t} tokens")
    x = x.view(n, g // k, k, g // k, k, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (g // k) ** 2, k * k * c)


CNN_STRIDE = 16  # stem (conv stride 2 + max-pool 2), then two stride-2 stages


def with_coords(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 5, H, W]: append x and y coordinates in [-1, 1]."""
    n, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(n, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([x, xs, ys], dim=1)


def cnn_config(cfg: VisionConfig):
    """A small ResNet (transformers' ResNetModel): three stages of basic blocks, widths width/4, width/2, width."""
    from transformers import ResNetConfig

    w = cfg.width
    return ResNetConfig(num_channels=5, embedding_size=w // 4, hidden_sizes=[w // 4, w // 2, w],
                        depths=[cfg.layers] * 3, layer_type="basic", downsample_in_first_stage=False)


class VisionEncoder(nn.Module):
    """Wraps a transformers vision tower and its image processor.

    `out_dim` and `n_tokens` describe the features after the optional merge; the projector and the
    placeholder count are sized from them, never from constants.
    """

    def __init__(self, cfg: VisionConfig, tower: tuple[nn.Module, Any] | None = None):
        super().__init__()
        self.cfg = cfg
        # `tower` (module, processor) lets a caller bring one it built itself, e.g. the light inference towers.
        self.tower, self.processor = tower or _build_tower(cfg)
        if tower is None:  # a tower brought in is for inference (possibly int8): left as it came
            self.tower.requires_grad_(not cfg.freeze)
        self._set_geometry()

    def _set_geometry(self) -> None:
        cfg, tcfg = self.cfg, self.tower.config
        self.is_clip = cfg.kind in ("clip", "scratch")
        if cfg.kind == "cnn":  # a ResNet: 16x downsampling, its last stage's channels
            self.image_size, width, grid = cfg.image_size, tcfg.hidden_sizes[-1], cfg.image_size // CNN_STRIDE
        else:
            self.image_size, width, grid = tcfg.image_size, tcfg.hidden_size, tcfg.image_size // tcfg.patch_size
        if cfg.merge > 1 and grid % cfg.merge:
            raise ValueError(f"merge {cfg.merge} does not divide the {grid}x{grid} patch grid")
        self.n_tokens = (grid // cfg.merge) ** 2
        self.out_dim = width * cfg.merge * cfg.merge

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.tower.parameters()).dtype
        if self.cfg.kind == "cnn":
            # A CNN's features say what is there, not where: two coordinate channels (CoordConv) let every
            # token also say which cell it is, which the LLM needs for "Where is ...?".
            out = self.tower(pixel_values=with_coords(pixel_values.to(dtype))).last_hidden_state
            return pixel_shuffle(out.flatten(2).transpose(1, 2), self.cfg.merge)
        out = self.tower(pixel_values=pixel_values.to(dtype))
        out = getattr(out, "last_hidden_state", out)  # a light tower returns the tensor itself
        if self.is_clip:
            if self.cfg.drop_cls:
                out = out[:, 1:]
            if self.cfg.post_layernorm:
                tower = getattr(self.tower, "vision_model", self.tower)
                out = tower.post_layernorm(out)
        return pixel_shuffle(out, self.cfg.merge)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images of any size -> normalised pixels [N, 3, S, S] (the encoder's own processor)."""
        images = [im.convert("RGB") for im in images]
        if not hasattr(self.processor, "save_pretrained"):  # a light tower's own preprocessor
            return self.processor(images)
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Tower weights + config + image processor, loadable by transformers alone."""
        self.tower.save_pretrained(out_dir)
        self.processor.save_pretrained(out_dir)


def _build_tower(cfg: VisionConfig):
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionModel

    clip_proc, siglip_proc = image_processor_classes()
    if cfg.kind == "cnn" and not cfg.path:
        from transformers import ResNetModel

        return ResNetModel(cnn_config(cfg)), _plain_processor(clip_proc, cfg.image_size)
    if cfg.kind == "scratch" and not cfg.path:
        vcfg = CLIPVisionConfig(
            hidden_size=cfg.width, intermediate_size=4 * cfg.width, num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
            hidden_act="gelu", projection_dim=cfg.width,
        )
        tower = CLIPVisionModel(vcfg)
        return tower, _plain_processor(clip_proc, cfg.image_size)
    path = Path(cfg.path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"vision encoder folder {str(path)!r} has no config.json; pass the local directory of a "
            f"{cfg.kind} model saved with save_pretrained (a VLM without its encoder cannot see)")
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    kind = "siglip" if cfg.kind == "siglip" or model_type.startswith("siglip") else "clip"
    from transformers import ResNetModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a loading bar per encoder is noise in every command's output
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # CLIPModel folders carry an unused text tower: not worth a report
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # dtype float32: transformers >= 5 would otherwise keep a float16 checkpoint in float16.
        if cfg.kind == "cnn" or model_type == "resnet":
            tower = ResNetModel.from_pretrained(path, dtype=torch.float32)
            proc = clip_proc.from_pretrained(path)
        elif kind == "siglip":
            tower = SiglipVisionModel.from_pretrained(path, dtype=torch.float32)
            proc = siglip_proc.from_pretrained(path)
        else:
            tower = CLIPVisionModel.from_pretrained(path, dtype=torch.float32)
            proc = clip_proc.from_pretrained(path)
    hf_logging.set_verbosity(verbosity)
    return tower.eval(), proc


def _plain_processor(proc_cls, size: int):
    """Resize the short side, centre-crop, scale to [-1, 1]: all a from-scratch encoder needs."""
    return proc_cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=Image.BILINEAR)
