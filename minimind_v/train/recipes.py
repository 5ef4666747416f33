"""Named encoder recipes and stage defaults: the real MiniMind-V setups, one flag each.

    --vision clip-b16     CLIP ViT-B/16 at 224 px: CLS dropped, 196 tokens x 768, linear projector (MiniMind2-V)
    --vision siglip2-b32  SigLIP2 base P32 at 256 px: post-layernorm, 64 tokens x 768, MLP projector (minimind-3v)
    --merge 2             optional 2 x 2 pixel shuffle: 4x fewer tokens, 4x wider (CLIP: 196 -> 49 x 3072)

The weights come from a local folder (`--vision-path`), e.g. `openai/clip-vit-base-patch16` or
`google/siglip2-base-patch32-256` downloaded once with `huggingface-cli download ... --local-dir`.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import VisionConfig


@dataclass(frozen=True)
class VisionRecipe:
    kind: str
    projector: str
    image_size: int
    patch_size: int
    drop_cls: bool = True
    post_layernorm: bool = False
    source: str = ""

    def tokens(self, merge: int = 1) -> int:
        return (self.image_size // self.patch_size // merge) ** 2

    def vision_config(self, path: str, merge: int = 1) -> VisionConfig:
        return VisionConfig(kind=self.kind, path=path, image_size=self.image_size, patch_size=self.patch_size,
                            merge=merge, drop_cls=self.drop_cls, post_layernorm=self.post_layernorm, freeze=True)


VISION_RECIPES: dict[str, VisionRecipe] = {
    "clip-b16": VisionRecipe("clip", "linear", 224, 16, drop_cls=True, post_layernorm=False,
                             source="openai/clip-vit-base-patch16"),
    "siglip2-b32": VisionRecipe("siglip", "mlp", 256, 32, source="google/siglip2-base-patch32-256"),
}


def vision_recipe(name: str) -> VisionRecipe:
    if name not in VISION_RECIPES:
        raise ValueError(f"unknown vision recipe {name!r}; choose one of: {', '.join(VISION_RECIPES)}")
    return VISION_RECIPES[name]


@dataclass(frozen=True)
class StageDefaults:
    """Starting points per stage. The VLM stages follow the reference (lr 4e-4 / batch 16 / MiniMind2-V's
    max length 640 / projector only for pretrain; minimind-3v's lr 5e-6 / batch 4 / 768 / first + last layer
    for SFT); the LLM stages are ordinary small-LLM values. Every one is a command-line flag."""

    lr: float
    batch_size: int
    max_len: int
    epochs: int
    freeze_llm: int = 0  # VLM stages: 0 whole LLM, 1 first + last layer, 2 projector only


STAGE_DEFAULTS: dict[str, StageDefaults] = {
    "llm-pretrain": StageDefaults(lr=5e-4, batch_size=32, max_len=340, epochs=1),
    "llm-sft": StageDefaults(lr=1e-5, batch_size=16, max_len=768, epochs=2),
    "pretrain": StageDefaults(lr=4e-4, batch_size=16, max_len=640, epochs=2, freeze_llm=2),
    "sft": StageDefaults(lr=5e-6, batch_size=4, max_len=768, epochs=2, freeze_llm=1),
}
