"""Encoder features computed once per image and reused across epochs and stages.

A frozen encoder gives an image the same features every time, yet it is most of a VLM training step when the
LLM is small. The cache keeps each image's features (after the optional merge, before the projector, which
trains) as fp16 `.npy` under `root/<encoder key>/<2 hex>/<content hash>.npy`:
  - the content hash is of the image file's bytes, so a renamed or duplicated image is found, an edited one not;
  - the encoder key hashes the encoder's weights, processor settings and token options: another encoder, or
    the same with a different merge, gets a separate folder and never mixes features.
Workers read cached features instead of preprocessing pixels; images not yet cached travel as pixels with their
keys, and `FeatureFiller` (on the training device) encodes them, writes them (temp file + rename) and fills
the batch in. The first epoch fills the cache; later epochs and later stages only read it.
Size on disk per image: tokens x width x 2 bytes (SigLIP2 P32: 64 x 768 -> 96 KiB; CLIP B/16: 196 x 768 -> 294 KiB).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import IMAGE_TOKEN
from .chat import encode_conversation
from .formats import MAX_IMAGE_PIXELS, BadRow, load_image


def encoder_key(vision: Any) -> str:
    """A short hash naming an encoder's feature space: weights, processor and token options."""
    from ..runs import dir_hash

    cfg = vision.cfg
    h = hashlib.sha256()
    parts = {"kind": cfg.kind, "merge": cfg.merge, "drop_cls": cfg.drop_cls, "post_ln": cfg.post_layernorm,
             "tokens": vision.n_tokens, "dim": vision.out_dim, "processor": vision.processor.to_dict()}
    if cfg.path:
        parts["weights"] = dir_hash(Path(cfg.path))
    else:  # an encoder built in memory: hash its weights directly
        for k, v in sorted(vision.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


class FeatureCache:
    def __init__(self, root: str | Path, key: str):
        self.dir = Path(root) / key
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def content_key(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)  # plain arrays only: a cache file can never run code
        except (ValueError, OSError):
            return None  # a damaged entry is recomputed

    def put(self, key: str, feats: np.ndarray) -> None:
        p = self.path(key)
        p.parent.mkdir(exist_ok=True)
        tmp = p.with_name(f".{p.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, feats.astype(np.float16), allow_pickle=False)
        os.replace(tmp, p)


def _bytes(ref: bytes | str) -> bytes:
    if isinstance(ref, bytes):
        return ref
    if not os.path.isfile(ref):
        raise BadRow("missing_image", f"no image file {ref!r}")
    with open(ref, "rb") as f:
        return f.read()


@dataclass
class CachedSampleEncoder:
    """Like SampleEncoder, but takes a record with undecoded images and uses cached features where it can."""

    tokenizer: Any
    preprocess: Callable[[list], torch.Tensor]
    tokens_per_image: int
    feat_dim: int
    cache: FeatureCache
    image_token: str = IMAGE_TOKEN
    max_len: int = 512
    max_image_pixels: int = MAX_IMAGE_PIXELS

    def __call__(self, rec: dict[str, Any]) -> dict[str, Any]:
        ids, labels = encode_conversation(self.tokenizer, rec["conversations"], tokens_per_image=self.tokens_per_image,
                                          image_token=self.image_token, max_len=self.max_len)
        out: dict[str, Any] = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        refs = rec["images"]
        if not refs:
            return out
        data = [_bytes(r) for r in refs]
        keys = [self.cache.content_key(d) for d in data]
        feats = torch.zeros(len(refs), self.tokens_per_image, self.feat_dim, dtype=torch.float16)
        missing = []
        for j, k in enumerate(keys):
            f = self.cache.get(k)
            if f is not None and f.shape == tuple(feats.shape[1:]):
                feats[j] = torch.from_numpy(f)
            else:
                missing.append(j)
        out["vision_feats"] = feats
        out["fill_index"] = torch.tensor(missing, dtype=torch.long)
        out["image_keys"] = [keys[j] for j in missing]
        if missing:
            out["pixel_values"] = self.preprocess([load_image(data[j], self.max_image_pixels) for j in missing])
        return out


class FeatureFiller:
    """On the device: encode the batch's uncached images, store their features, put them in the batch."""

    def __init__(self, vision: torch.nn.Module, cache: FeatureCache, write: bool = True):
        self.vision, self.cache, self.write = vision, cache, write
        self.hits = self.misses = 0

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if "vision_feats" not in batch:
            return batch
        fill = batch.pop("fill_index")
        keys = batch.pop("image_keys")
        self.misses += len(keys)
        self.hits += len(batch["vision_feats"]) - len(keys)
        if len(keys):
            feats = self.vision(batch.pop("pixel_values")).to(torch.float16)
            batch["vision_feats"][fill.to(batch["vision_feats"].device)] = feats
            if self.write:
                for k, f in zip(keys, feats.cpu().numpy()):
                    self.cache.put(k, f)
        batch.pop("pixel_values", None)
        return batch
