"""Pretrained-encoder folders as transformers stores them: the image-processor classes to read them with, and
randomly initialised ones written the same way (tests, dry runs and benchmarks need no download)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def image_processor_classes() -> tuple[Any, Any]:
    """CLIP's and SigLIP's PIL-based processors: they need no torchvision (transformers >= 5 names them *Pil)."""
    import transformers

    clip = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    siglip = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    return clip, siglip


def write_random_encoder(kind: str, out: str | Path, *, image_size: int, patch_size: int, width: int,
                         layers: int = 1, heads: int = 2, ffn: int | None = None, seed: int | None = None) -> Path:
    """A randomly initialised CLIP or SigLIP vision tower + image processor in a folder, loadable like the
    real ones (`--vision-path`): same classes and code path as a download. `ffn` defaults to 2 x width."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    clip_proc, siglip_proc = image_processor_classes()
    if seed is not None:
        torch.manual_seed(seed)
    common = dict(hidden_size=width, intermediate_size=ffn or 2 * width, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch_size)
    if kind == "clip":
        model = CLIPVisionModel(CLIPVisionConfig(**common, hidden_act="quick_gelu"))
        proc = clip_proc(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    elif kind == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**common))
        proc = siglip_proc(size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"kind must be 'clip' or 'siglip', not {kind!r}")
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return Path(out)
