"""Validation loss during training: the same loss on rows the model never trains on, every few steps.

A falling training loss says the model fits its data; only a held-out loss says whether it generalises, and
when it starts to overfit. The validation rows come from their own file (`--val-data`), are read in order and
never shuffled, so every measurement sees the same rows; at most `max_batches` batches are used. Only the main
process validates (the others wait for it at the next step's collective).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from ..device import autocast
from .trainer import LossModule, to_device


class Validator:
    """`validator(model)` -> the mean token loss over the validation batches (model left in train mode)."""

    def __init__(self, batches: Callable[[], Iterable[dict[str, Any]]], device: torch.device, dtype: str = "fp32",
                 max_batches: int = 20, prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
        self.batches, self.device, self.dtype = batches, device, dtype
        self.max_batches, self.prepare = max_batches, prepare

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> float:
        loss = LossModule(model)
        total, tokens = torch.zeros((), device=self.device), 0
        model.eval()
        try:
            for k, b in enumerate(self.batches()):
                if k == self.max_batches:
                    break
                if "input_ids" not in b:  # every row of the batch was skipped
                    continue
                b = to_device(b, self.device)
                if self.prepare:
                    b = self.prepare(b)
                with autocast(self.device, self.dtype):
                    s, n, _ = loss(b)
                total += s.float()
                tokens += int(n)
        finally:
            model.train()
        if not tokens:
            raise ValueError("the validation data gave no labelled token (every row skipped or no answers)")
        return float(total) / tokens
