"""The bridge from vision features to the LLM's embedding space.

- "linear": one Linear with bias, as MiniMind2-V does.
- "mlp":    LayerNorm -> Linear -> GELU -> Linear, as LLaVA-1.5 and minimind-3v do. The LayerNorm matters when the
            encoder's features are not normalised (CLIP's last hidden state), and the hidden layer lets the
            projector re-mix features that a single matrix can only rotate and scale.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class Projector(nn.Module):
    def __init__(self, kind: str, in_dim: int, out_dim: int):
        super().__init__()
        self.kind = kind
        if kind == "linear":
            self.linear = nn.Linear(in_dim, out_dim)
        elif kind == "mlp":
            # Indices 0, 1, 3 match minimind-3v's `vision_proj.mlp.*` keys, which keeps import a renaming only.
            self.mlp = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim), nn.GELU(),
                                     nn.Linear(out_dim, out_dim))
        else:
            raise ValueError(f"unknown projector {kind!r}; choose 'linear' or 'mlp'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if self.kind == "linear" else self.mlp(x)
