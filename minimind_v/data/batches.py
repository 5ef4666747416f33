"""From encoded samples to batch rows: padded (one sample per row) or packed (several per row).

Padding goes only to the batch's longest sample, never to the maximum length (unless `pad_to` asks).

Packing puts the batch's samples into as few rows of at most `max_len` tokens as first-fit-decreasing finds.
`doc_ids` number the samples inside each row; the decoder turns them into a block-diagonal causal mask and
restarts positions at 0 for each sample, so a packed sample sees exactly what it would see alone in a padded
row. The first token of each sample is never a target (in a padded row nothing precedes it), so the last token
of one sample is never trained to predict the next sample: packed and padded batches have the same loss.

Images travel in the order their placeholder runs appear in the flattened batch (row by row), for the VLM's
splice. Besides `pixel_values`, a sample may carry cached encoder features (`vision_feats`, with `fill_index`
naming the images whose features still have to be computed from `pixel_values`); see feature_cache.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .chat import IGNORE_INDEX


def gather_images(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate the samples' image tensors in the given order (fill indices shifted to batch positions)."""
    out: dict[str, Any] = {}
    pixels = [s["pixel_values"] for s in samples if "pixel_values" in s]
    if any("vision_feats" in s for s in samples):
        feats, fill, keys, offset = [], [], [], 0
        for s in samples:
            if "vision_feats" in s:
                fill.append(s["fill_index"] + offset)
                keys += s["image_keys"]
                feats.append(s["vision_feats"])
                offset += len(s["vision_feats"])
        out["vision_feats"] = torch.cat(feats)
        out["fill_index"] = torch.cat(fill)
        out["image_keys"] = keys
    if pixels:
        out["pixel_values"] = torch.cat(pixels)
    return out


def gather_ground(samples: list[dict[str, Any]], places: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """The samples' grounding pairs (grounding.py) as one [n, 3] tensor of (row, query, key), each sample's
    positions shifted to where `places` (row, offset) put it; nothing when no sample has any."""
    parts = [torch.cat([torch.full_like(s["ground"][:, :1], r), s["ground"] + o], 1)
             for s, (r, o) in zip(samples, places) if "ground" in s]
    return {"ground": torch.cat(parts)} if parts else {}


@dataclass
class PadCollate:
    """Right-pad to the longest sample of the batch (`pad_to`: to a fixed length, as the reference does)."""

    pad_id: int = 0
    pad_to: int = 0

    def __call__(self, samples: list[dict[str, Any]], pad_id: int | None = None) -> dict[str, Any]:
        pad = self.pad_id if pad_id is None else pad_id
        longest = max(self.pad_to, *(len(s["input_ids"]) for s in samples))
        n = len(samples)
        input_ids = torch.full((n, longest), pad, dtype=torch.long)
        labels = torch.full((n, longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((n, longest), dtype=torch.long)
        for i, s in enumerate(samples):
            t = len(s["input_ids"])
            input_ids[i, :t], labels[i, :t], attention_mask[i, :t] = s["input_ids"], s["labels"], 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, **gather_images(samples),
                **gather_ground(samples, [(i, 0) for i in range(n)])}


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of sample indices, each summing to at most `capacity`, longest samples placed first."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        if lengths[i] > capacity:
            raise ValueError(f"a sample of {lengths[i]} tokens does not fit a packed row of {capacity}")
        for b, r in enumerate(room):
            if lengths[i] <= r:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


@dataclass
class PackCollate:
    """Pack the batch's samples into rows of at most `max_len` tokens with per-sample `doc_ids`."""

    max_len: int
    pad_id: int = 0

    def __call__(self, samples: list[dict[str, Any]], pad_id: int | None = None) -> dict[str, Any]:
        pad = self.pad_id if pad_id is None else pad_id
        bins = first_fit_decreasing([len(s["input_ids"]) for s in samples], self.max_len)
        width = max(sum(len(samples[i]["input_ids"]) for i in b) for b in bins)
        n = len(bins)
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        doc_ids = torch.full((n, width), -1, dtype=torch.long)  # padding is a document of its own
        places = []  # (row, offset) of each sample, in bin order
        for r, b in enumerate(bins):
            t = 0
            for d, i in enumerate(b):
                places.append((r, t))
                ids, lab = samples[i]["input_ids"], samples[i]["labels"].clone()
                lab[0] = IGNORE_INDEX  # nothing before a sample's first token belongs to it
                input_ids[r, t:t + len(ids)], labels[r, t:t + len(ids)], doc_ids[r, t:t + len(ids)] = ids, lab, d
                t += len(ids)
        ordered = [samples[i] for b in bins for i in b]
        return {"input_ids": input_ids, "labels": labels, "doc_ids": doc_ids,
                "attention_mask": (doc_ids >= 0).long(), **gather_images(ordered),
                **gather_ground(ordered, places)}


def collate(batch: list[dict[str, torch.Tensor]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample; attention_mask marks real tokens; images concatenated in order."""
    return PadCollate(pad_id)(batch)
