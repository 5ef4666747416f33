"""Text + images -> model inputs for an exported MiniMind-V.

Write one `<image>` marker per image in the (chat-templated) text; the processor expands each marker into the
model's placeholder tokens and turns the images into `pixel_values` [N, 3, H, W] in reading order.
Batches are padded on the left, so every row's next token is in the same column for `generate`.
"""
from __future__ import annotations

from transformers import BatchFeature, ProcessorMixin


class MiniMindVProcessor(ProcessorMixin):
    def __init__(self, image_processor=None, tokenizer=None, image_token: str = "<|image_pad|>",
                 tokens_per_image: int = 1, image_marker: str = "<image>", chat_template=None, **kwargs):
        self.image_token = image_token
        self.tokens_per_image = tokens_per_image
        self.image_marker = image_marker
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, text=None, images=None, return_tensors: str = "pt", **kwargs) -> BatchFeature:
        if text is None:
            raise ValueError("pass text (with one <image> marker per image)")
        texts = [text] if isinstance(text, str) else list(text)
        flat = []
        for item in images or []:  # a list of images, or one list of images per text
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        markers = sum(t.count(self.image_marker) for t in texts)
        if markers != len(flat):
            raise ValueError(f"the text has {markers} {self.image_marker} markers but {len(flat)} images were given")
        expanded = [t.replace(self.image_marker, self.image_token * self.tokens_per_image) for t in texts]
        self.tokenizer.padding_side = "left"
        data = dict(self.tokenizer(expanded, add_special_tokens=False, padding=len(expanded) > 1,
                                   return_tensors=return_tensors))
        if flat:
            data["pixel_values"] = self.image_processor(images=flat, return_tensors=return_tensors)["pixel_values"]
        return BatchFeature(data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
