"""From conversations with images to padded tensors.

`SampleEncoder` runs per sample (inside DataLoader workers): it tokenises the conversation with assistant-only
labels and preprocesses the images with the encoder's own processor. `collate` pads a batch only to its longest
sample, never to the maximum length, and flattens the batch's images in reading order for the VLM's splice
(`packing.py` has the packed layout too).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from PIL import Image

from .chat import count_markers, encode_conversation

IGNORE = -100


@dataclass
class SampleEncoder:
    tokenizer: Any
    preprocess: Callable[[list[Image.Image]], torch.Tensor]
    tokens_per_image: int
    image_token: str = "<|image_pad|>"
    max_len: int = 512

    def __call__(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        convs = sample["conversations"]
        images = sample.get("images") or []
        n_markers = sum(count_markers(m["content"]) for m in convs)
        if n_markers != len(images):
            raise ValueError(f"the conversation has {n_markers} <image> markers but {len(images)} images")
        ids, labels = encode_conversation(self.tokenizer, convs, tokens_per_image=self.tokens_per_image,
                                          image_token=self.image_token, max_len=self.max_len)
        out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        if images:
            out["pixel_values"] = self.preprocess(images)
        return out


def collate(batch: list[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample; attention_mask marks real tokens; images concatenated in order."""
    from .packing import PadCollate  # packing.py holds both batch layouts (padded and packed)

    return PadCollate(pad_id)(batch)
