"""The VLM: a MiniMind LLM whose image placeholder tokens are replaced by projected image features.

This is the whole change to the plain LLM. A prompt holds `tokens_per_image` placeholder ids per image; the
images of a batch arrive flattened in reading order (row 0's images, then row 1's, ...). One boolean mask and one
`masked_scatter` put every image feature in its place: no Python loop over tokens or images, any number of
images per sample, any batch size.

With `attention="turn"` one more thing changes: in a user turn that holds images, every token may also read the
turn's words that come after it, so an image's tokens can already look for what the question asks about. A
decoder that reads the image first and the question second must otherwise find the asked-about object from the
answer's side alone, a search a small model learns slowly. Images never read later images (which one came first
is what "the first image" means), and answers stay causal.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import VLMConfig
from .llm import LMOutput, MiniMindLM, since_doc_start
from .projector import Projector
from .vision import VisionEncoder


class PlaceholderMismatch(ValueError):
    """The prompt's image placeholders do not match the images given."""


class MiniMindVLM(nn.Module):
    def __init__(self, cfg: VLMConfig, vision: VisionEncoder | None = None):
        super().__init__()
        self.cfg = cfg
        self.llm = MiniMindLM(cfg.llm)
        self.vision = vision if vision is not None else VisionEncoder(cfg.vision)
        self.projector = Projector(cfg.projector, self.vision.out_dim, cfg.llm.dim)
        self.image_slot = nn.Embedding(cfg.image_slots, cfg.llm.dim) if cfg.image_slots else None
        if self.image_slot is not None:
            nn.init.zeros_(self.image_slot.weight)  # starts as the plain splice

    @property
    def tokens_per_image(self) -> int:
        return self.vision.n_tokens

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, tokens_per_image, llm dim]. No gradient flows into a frozen encoder."""
        if self.cfg.vision.freeze:
            with torch.no_grad():
                feats = self.vision(pixel_values)
        else:
            feats = self.vision(pixel_values)
        return self.projector(feats.to(self.projector_dtype))

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def splice(self, input_ids: torch.Tensor, embeds: torch.Tensor, image_embeds: torch.Tensor,
               doc_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace placeholder embeddings by image features, image k of the batch into the k-th run (plus the
        embedding of its place among its sample's images, with `image_slots`)."""
        mask = input_ids == self.cfg.image_token_id
        n_slots, n_feats = int(mask.sum()), image_embeds.shape[0] * image_embeds.shape[1]
        if n_slots != n_feats:
            per_image = image_embeds.shape[1]
            raise PlaceholderMismatch(
                f"the prompt has {n_slots} image placeholder tokens ({n_slots / per_image:g} images' worth) "
                f"but {image_embeds.shape[0]} images were given ({per_image} tokens each); write exactly one "
                f"image marker per image")
        feats = image_embeds.reshape(-1, embeds.shape[-1])
        if self.image_slot is not None:
            nth = image_ordinals(mask, image_embeds.shape[1], doc_ids).clamp(max=self.cfg.image_slots - 1)
            feats = feats + self.image_slot(nth).to(feats.dtype)
        return embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, *,
                image_embeds: torch.Tensor | None = None, **llm_kwargs) -> LMOutput:
        """input_ids [B, T]; pixel_values [N, 3, H, W] for the N images of the batch in reading order.

        `image_embeds` (already projected) may be passed instead of pixels, e.g. by a feature cache.
        Cached decoding steps pass neither: their tokens are text.
        """
        embeds = self.llm.embed(input_ids)
        if pixel_values is not None and image_embeds is None and pixel_values.shape[0] > 0:
            image_embeds = self.encode_images(pixel_values)
        if image_embeds is not None:
            embeds = self.splice(input_ids, embeds, image_embeds, llm_kwargs.get("doc_ids"))
        elif llm_kwargs.get("cache") is None or llm_kwargs["cache"].length == 0:
            n_slots = int((input_ids == self.cfg.image_token_id).sum())
            if n_slots:
                raise PlaceholderMismatch(f"the prompt has {n_slots} image placeholder tokens but no image")
        if self.cfg.attention == "turn" and image_embeds is not None:  # only a chunk with images has image turns
            llm_kwargs["blocks"] = image_turns(input_ids, self.cfg.turn_start_id, self.cfg.image_token_id)
        return self.llm(inputs_embeds=embeds, **llm_kwargs)


def image_ordinals(is_image: torch.Tensor, per_image: int, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """For every image token of [B, T] `is_image`, in reading order: which image of its sample it belongs to
    (0, 1, ...). A sample is a row, or a document of a packed row (`doc_ids`)."""
    before = is_image.long().cumsum(dim=1) - is_image.long()  # image tokens before this one
    if doc_ids is not None:  # counted from the start of each document
        before = since_doc_start(before, doc_ids)
    return (before // per_image)[is_image]


def image_turns(input_ids: torch.Tensor, turn_start_id: int, image_token_id: int) -> torch.Tensor:
    """[B, T] block ids for the LLM's mask (llm.attention_plan): the k-th turn of a row (counted by its opening
    token) is block k when it holds an image token, else 0; in it, words get +k (later tokens are readable) and
    image tokens -k. Tokens before a row's first turn opener belong to no block."""
    turn = (input_ids == turn_start_id).long().cumsum(dim=1)
    is_image = input_ids == image_token_id
    has_image = torch.zeros(input_ids.shape[0], input_ids.shape[1] + 1, dtype=torch.long, device=input_ids.device)
    has_image.scatter_reduce_(1, turn, is_image.long(), reduce="amax")
    block = torch.where((has_image.gather(1, turn) > 0) & (turn > 0), turn, 0)
    return torch.where(is_image, -block, block)
