"""What each stage trains: the freeze strategies of MiniMind-V, and the encoder switch.

freeze_llm = 0: the whole LLM trains (with the projector).
freeze_llm = 1: the projector plus the first and last LLM layers (minimind-3v's SFT).
freeze_llm = 2: the projector only (alignment / pretrain in minimind-3v).
The vision encoder trains only when asked (`train_vision`), and only a from-scratch one ever should.
"""
from __future__ import annotations

import torch.nn as nn


def apply_freeze(model: nn.Module, freeze_llm: int, train_vision: bool = False) -> dict[str, int]:
    """Set requires_grad on a MiniMindVLM; returns trainable parameter counts per part."""
    if freeze_llm not in (0, 1, 2):
        raise ValueError(f"freeze_llm must be 0, 1 or 2, not {freeze_llm}")
    llm = model.llm
    llm.requires_grad_(freeze_llm == 0)
    if freeze_llm == 1:
        llm.layers[0].requires_grad_(True)
        llm.layers[-1].requires_grad_(True)
    model.projector.requires_grad_(True)
    model.vision.requires_grad_(train_vision)
    model.cfg.vision.freeze = not train_vision

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    return {"llm": count(llm), "projector": count(model.projector), "vision": count(model.vision)}
