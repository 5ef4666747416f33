"""What each stage trains: the freeze strategies of MiniMind-V, and the encoder switch.

freeze_llm = 0: the whole LLM trains (with the projector).
freeze_llm = 1: the projector plus the first and last LLM layers (minimind-3v's SFT).
freeze_llm = 2: the projector only (alignment / pretrain in minimind-3v).
The vision encoder trains only when asked (`train_vision`): all of it (-1), or only its last N transformer layers
and what follows them (N > 0). A pretrained encoder fine-tuned this way is then saved inside the run.
"""
from __future__ import annotations

import torch.nn as nn


def _train_last_layers(vision: nn.Module, n: int) -> None:
    """Freeze an encoder's embeddings and all but its last n transformer layers (the final norm stays trainable)."""
    stacks = [m for m in vision.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not stacks:
        raise ValueError("--train-vision N needs an encoder with a stack of layers; this one has none: use -1 (all)")
    layers = max(stacks, key=len)
    if n > len(layers):
        raise ValueError(f"--train-vision {n}: the encoder has only {len(layers)} layers")
    keep = {id(p) for layer in list(layers)[-n:] for p in layer.parameters()}
    seen_layers = {id(p) for layer in layers for p in layer.parameters()}
    after = False
    for name, p in vision.named_parameters():  # registration order: embeddings, layers, then the final norm
        if id(p) in seen_layers:
            after = True
        p.requires_grad_(id(p) in keep or (after and id(p) not in seen_layers))


def apply_freeze(model: nn.Module, freeze_llm: int, train_vision: bool | int = False) -> dict[str, int]:
    """Set requires_grad on a MiniMindVLM; returns trainable parameter counts per part.
    train_vision: False, True / -1 (the whole encoder) or N (its last N layers and the layers after them)."""
    if freeze_llm not in (0, 1, 2):
        raise ValueError(f"freeze_llm must be 0, 1 or 2, not {freeze_llm}")
    llm = model.llm
    llm.requires_grad_(freeze_llm == 0)
    if freeze_llm == 1:
        llm.layers[0].requires_grad_(True)
        llm.layers[-1].requires_grad_(True)
    model.projector.requires_grad_(True)
    if getattr(model, "image_slot", None) is not None:  # which image a token belongs to: part of the image side
        model.image_slot.requires_grad_(True)
    model.vision.requires_grad_(bool(train_vision))
    if train_vision is not True and train_vision > 0:
        _train_last_layers(model.vision, int(train_vision))
    model.cfg.vision.freeze = not train_vision

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    counts = {"llm": count(llm), "projector": count(model.projector), "vision": count(model.vision)}
    slot = getattr(model, "image_slot", None)
    return {**counts, "image_slots": count(slot)} if slot is not None else counts
