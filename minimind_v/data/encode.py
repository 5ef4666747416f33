"""One training sample, from a conversation with images to tensors.

`SampleEncoder` runs per sample (inside DataLoader workers): it tokenises the conversation with assistant-only
labels and preprocesses the images with the encoder's own processor. Making batches of the results is
`batches.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from PIL import Image

from ..config import IMAGE_TOKEN
from .chat import count_markers, encode_conversation
from .grounding import answer_targets


@dataclass
class SampleEncoder:
    tokenizer: Any
    preprocess: Callable[[list[Image.Image]], torch.Tensor]
    tokens_per_image: int
    image_token: str = IMAGE_TOKEN
    max_len: int = 512

    def __call__(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        convs = sample["conversations"]
        images = sample.get("images") or []
        n_markers = sum(count_markers(m["content"]) for m in convs)
        if n_markers != len(images):
            raise ValueError(f"the conversation has {n_markers} <image> markers but {len(images)} images")
        ids, labels = encode_conversation(self.tokenizer, convs, tokens_per_image=self.tokens_per_image,
                                          image_token=self.image_token, max_len=self.max_len,
                                          tools=sample.get("tools"))
        out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        if images:
            out["pixel_values"] = self.preprocess(images)
        if sample.get("ground"):  # where each answer should look (grounding.py), as token positions
            image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
            out["ground"] = answer_targets(out["input_ids"], out["labels"], sample["ground"], image_id,
                                           self.tokens_per_image)
        return out
