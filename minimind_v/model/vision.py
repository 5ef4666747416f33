"""Vision encoders behind one interface: pixels [N, 3, H, W] -> patch features [N, tokens, dim].

Three kinds share one code path, so the embedded default exercises exactly what real weights use:
  - "clip":    transformers' CLIPVisionModel from a local folder (MiniMind2-V: ViT-B/16, CLS dropped -> 196 x 768)
  - "siglip":  transformers' SiglipVisionModel from a local folder (minimind-3v: SigLIP2 P32, 64 x 768,
               post-layernorm included in its last hidden state)
  - "scratch": a small CLIP vision transformer built from a config and trained here on the shapes world.
An optional k x k pixel-shuffle merge trades tokens for width (4x fewer tokens at k=2).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image

from ..config import VisionConfig


def _image_processor_classes():
    """The PIL-based processors: they need no torchvision (transformers >= 5 names them *Pil)."""
    import transformers

    clip = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    siglip = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    return clip, siglip


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


class VisionEncoder(nn.Module):
    """Wraps a transformers vision tower and its image processor.

    `out_dim` and `n_tokens` describe the features after the optional merge; the projector and the
    placeholder count are sized from them, never from constants.
    """

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.tower, self.processor = _build_tower(cfg)
        self.tower.requires_grad_(not cfg.freeze)
        tcfg = self.tower.config
        self.is_clip = cfg.kind in ("clip", "scratch")
        grid = tcfg.image_size // tcfg.patch_size
        if cfg.merge > 1 and grid % cfg.merge:
            raise ValueError(f"merge {cfg.merge} does not divide the {grid}x{grid} patch grid")
        self.n_tokens = (grid // cfg.merge) ** 2
        self.out_dim = tcfg.hidden_size * cfg.merge * cfg.merge
        self.image_size = tcfg.image_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.tower.parameters()).dtype
        out = self.tower(pixel_values=pixel_values.to(dtype)).last_hidden_state
        if self.is_clip:
            if self.cfg.drop_cls:
                out = out[:, 1:]
            if self.cfg.post_layernorm:
                out = self.tower.vision_model.post_layernorm(out)
        return pixel_shuffle(out, self.cfg.merge)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images of any size -> normalised pixels [N, 3, S, S] (the encoder's own processor)."""
        images = [im.convert("RGB") for im in images]
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def save_pretrained(self, out_dir: str | Path) -> None:
        """Tower weights + config + image processor, loadable by transformers alone."""
        self.tower.save_pretrained(out_dir)
        self.processor.save_pretrained(out_dir)


def _build_tower(cfg: VisionConfig):
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionModel

    clip_proc, siglip_proc = _image_processor_classes()
    if cfg.kind == "scratch" and not cfg.path:
        vcfg = CLIPVisionConfig(
            hidden_size=cfg.width, intermediate_size=4 * cfg.width, num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
            hidden_act="gelu", projection_dim=cfg.width,
        )
        tower = CLIPVisionModel(vcfg)
        # The shapes world is drawn on a light background: plain 0.5 / 0.5 normalisation is enough.
        proc = clip_proc(size={"shortest_edge": cfg.image_size},
                         crop_size={"height": cfg.image_size, "width": cfg.image_size},
                         image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=Image.BILINEAR)
        return tower, proc
    path = Path(cfg.path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"vision encoder folder {str(path)!r} has no config.json; pass the local directory of a "
            f"{cfg.kind} model saved with save_pretrained (a VLM without its encoder cannot see)")
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    kind = "siglip" if cfg.kind == "siglip" or model_type.startswith("siglip") else "clip"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a loading bar per encoder is noise in every command's output
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # CLIPModel folders carry an unused text tower: not worth a report
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # dtype float32: transformers >= 5 would otherwise keep a float16 checkpoint in float16.
        if kind == "siglip":
            tower = SiglipVisionModel.from_pretrained(path, dtype=torch.float32)
            proc = siglip_proc.from_pretrained(path)
        else:
            tower = CLIPVisionModel.from_pretrained(path, dtype=torch.float32)
            proc = clip_proc.from_pretrained(path)
    hf_logging.set_verbosity(verbosity)
    return tower.eval(), proc
