"""Stage 0 for the embedded default: the from-scratch encoder learns to see before the LLM looks.

MiniMind-V freezes an encoder that was pretrained to see (CLIP). A from-scratch encoder trained only through the
LLM's answer loss throws colour and shape away, so here it first learns from the world's own labels: each of the
3 x 3 grid-aligned tokens (after the 2 x 2 merge) predicts its cell's colour, shape and size (or "empty") and which
cell it is, and the mean token predicts the digit for digit images. After this stage the encoder is frozen, exactly like CLIP.
"""
from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..data import world
from ..data.chat import IGNORE_INDEX
from ..data.digits import load_digit_split, render_digit
from ..model.vision import VisionEncoder


class CellHeads(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.color = nn.Linear(dim, len(world.COLORS) + 1)
        self.shape = nn.Linear(dim, len(world.SHAPES) + 1)
        self.size = nn.Linear(dim, len(world.SIZES) + 1)
        self.digit = nn.Linear(dim, 10)
        self.cell = nn.Linear(dim, 9)  # which cell a token is: keeps position linearly readable for the LLM


def scene_targets(scene: world.Scene) -> torch.Tensor:
    """[9, 3] class ids per cell (colour, shape, size); 0 means empty."""
    t = torch.zeros(9, 3, dtype=torch.long)
    colors, shapes, sizes = list(world.COLORS), list(world.SHAPES), list(world.SIZES)
    for o in scene.objects:
        t[o.row * 3 + o.col] = torch.tensor([colors.index(o.color) + 1, shapes.index(o.shape) + 1,
                                             sizes.index(o.size) + 1])
    return t


def _batch(enc: VisionEncoder, rng: random.Random, n: int, digits: tuple[np.ndarray, np.ndarray],
           digit_share: float) -> dict[str, Any]:
    images, targets, dlabels = [], [], []
    for _ in range(n):
        if rng.random() < digit_share:
            k = rng.randrange(len(digits[1]))
            images.append(render_digit(digits[0][k], size=rng.choice([32, 64, 96, 128])))
            targets.append(torch.full((9, 3), IGNORE_INDEX, dtype=torch.long))
            dlabels.append(int(digits[1][k]))
        else:
            scene = world.sample_scene(rng)
            size = rng.choice([48, 64, 80, 96, 112, 128])  # the processor rescales: learn every source size
            images.append(world.render(scene, size=size, rng=rng, jitter=True))
            targets.append(scene_targets(scene))
            dlabels.append(IGNORE_INDEX)
    return {"pixels": enc.preprocess(images), "cells": torch.stack(targets), "digit": torch.tensor(dlabels)}


def pretrain_vision(enc: VisionEncoder, *, steps: int, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                    digit_share: float = 0.15, device: torch.device = torch.device("cpu"),
                    log: Any = None) -> tuple[dict[str, float], CellHeads]:
    """Train the encoder on scene labels; returns running accuracies on objects per attribute, and the heads."""
    if enc.n_tokens != 9:
        raise ValueError(f"vision pretraining needs 9 grid-aligned tokens, the encoder gives {enc.n_tokens}")
    enc.to(device).train().requires_grad_(True)
    heads = CellHeads(enc.out_dim).to(device)
    params = list(enc.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rng, digits = random.Random(seed), load_digit_split("train")
    acc: dict[str, float] = {}
    t0 = time.time()
    bar = tqdm(range(steps), desc="vision", dynamic_ncols=True)
    for step in bar:
        for g in opt.param_groups:  # warmup then cosine to 10%
            warm = min(1.0, (step + 1) / 50)
            g["lr"] = lr * warm * (0.1 + 0.45 * (1 + np.cos(np.pi * step / steps)))
        b = _batch(enc, rng, batch_size, digits, digit_share)
        feats = enc(b["pixels"].to(device))  # [N, 9, D]
        cells = b["cells"].to(device)
        loss = 0.0
        for j, head in enumerate((heads.color, heads.shape, heads.size)):
            logits = head(feats)
            loss = loss + F.cross_entropy(logits.flatten(0, 1), cells[..., j].flatten(), ignore_index=IGNORE_INDEX)
            ok = cells[..., j] > 0  # accuracy on objects only: empty cells are most cells and easy
            if ok.any():
                a = (logits.argmax(-1)[ok] == cells[..., j][ok]).float().mean().item()
                acc[("color", "shape", "size")[j]] = 0.9 * acc.get(("color", "shape", "size")[j], a) + 0.1 * a
        cell_ids = torch.arange(9, device=device).expand(feats.shape[0], 9)
        loss = loss + 0.1 * F.cross_entropy(heads.cell(feats).flatten(0, 1), cell_ids.flatten())
        dl = heads.digit(feats.mean(1))
        dig = b["digit"].to(device)
        if (dig >= 0).any():
            loss = loss + F.cross_entropy(dl, dig, ignore_index=IGNORE_INDEX)
            a = (dl.argmax(-1)[dig >= 0] == dig[dig >= 0]).float().mean().item()
            acc["digit"] = 0.9 * acc.get("digit", a) + 0.1 * a
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", **{k: f"{v:.2f}" for k, v in acc.items()})
        if log is not None and (step % 20 == 0 or step == steps - 1):
            log({"stage": "vision", "step": step, "loss": round(loss.item(), 5),
                 **{f"acc_{k}": round(v, 4) for k, v in acc.items()}, "elapsed_s": round(time.time() - t0, 1)})
    enc.eval().requires_grad_(False)
    return acc, heads.eval()


@torch.no_grad()
def probe_vision(enc: VisionEncoder, heads: CellHeads, n: int = 256, image_size: int = 96) -> dict[str, float]:
    """Per-object accuracy of the heads on held-out scenes (evaluation seeds, the evaluation drawing style)."""
    from ..data.chatmix import EVAL_STYLE

    images, targets = [], []
    for i in range(n):
        scene = world.sample_scene(random.Random(world.eval_seed(world.PROBE_SEED_OFFSET + i)))
        images.append(world.render(scene, size=image_size, **EVAL_STYLE))
        targets.append(scene_targets(scene))
    device = next(enc.parameters()).device
    feats = torch.cat([enc(enc.preprocess(images[i:i + 64]).to(device)) for i in range(0, n, 64)])
    cells = torch.stack(targets).to(device)
    out = {}
    for j, (name, head) in enumerate((("color", heads.color), ("shape", heads.shape), ("size", heads.size))):
        ok = cells[..., j] > 0
        out[name] = (head(feats).argmax(-1)[ok] == cells[..., j][ok]).float().mean().item()
    return out
