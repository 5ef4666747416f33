"""One training loop for every stage: AdamW, warmup + cosine, clipping, autocast, tqdm, JSON-lines metrics.

The loss is next-token cross-entropy on assistant tokens only. Logits are computed only at the positions that
have a label: with a 6400-token vocabulary and short answers that skips most of the head's work.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..data.collate import IGNORE


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this (MiniMind: lr / 10)
    warmup: int = 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    log_every: int = 10
    seed: int = 0


def pick_device(name: str = "auto") -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype not in ("bf16", "fp16"):
        raise ValueError(f"unknown dtype {dtype!r}; choose fp32, bf16 or fp16")
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the next token where a label exists, plus the MoE auxiliary loss."""
    # Batches are right-padded, so causal attention already keeps real tokens blind to the padding; leaving
    # the mask out keeps SDPA on its fast causal kernels. (Left padding or packing must pass a mask / doc_ids.)
    out = model(batch["input_ids"], batch.get("pixel_values"), logits_to_keep=1,
                **{k: batch[k] for k in ("doc_ids", "position_ids") if k in batch})
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    hidden = out.hidden[:, :-1][keep]
    logits = model.llm.lm_head(hidden).float()
    loss = F.cross_entropy(logits, targets[keep])
    return loss, out.aux_loss


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases and embeddings (1-D tensors and the tied table)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), **fused)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def train(model: torch.nn.Module, batches: Iterable[dict[str, torch.Tensor]], cfg: TrainConfig, *,
          device: torch.device, metrics_path: str | Path | None = None, stage: str = "train",
          desc: str | None = None) -> list[dict[str, float]]:
    """Run `cfg.steps` optimizer steps over `batches`; returns the logged rows (also appended to metrics_path)."""
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type) if cfg.dtype == "fp16" else None
    log = open(metrics_path, "a") if metrics_path else None
    rows: list[dict[str, float]] = []
    it = iter(batches)
    bar = tqdm(range(cfg.steps), desc=desc or stage, dynamic_ncols=True)
    t0, seen, tokens, ema = time.time(), 0, 0, None
    for step in bar:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(batches)
            batch = next(it)
        batch = to_device(batch, device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g.get("lr_scale", 1.0)
        with autocast(device, cfg.dtype):
            loss, aux = lm_loss(model, batch)
            total = loss + aux
        if scaler:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        (scaler.step(opt), scaler.update()) if scaler else opt.step()
        opt.zero_grad(set_to_none=True)
        seen += batch["input_ids"].shape[0]
        tokens += int(batch["attention_mask"].sum())
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        bar.set_postfix(loss=f"{ema:.3f}")
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            el = time.time() - t0
            row = {"stage": stage, "step": step, "loss": round(loss.item(), 5), "aux": round(float(aux), 5),
                   "lr": opt.param_groups[0]["lr"], "grad_norm": round(float(gnorm), 4),
                   "samples_per_s": round(seen / el, 2), "tokens_per_s": round(tokens / el, 1),
                   "elapsed_s": round(el, 1)}
            rows.append(row)
            if log:
                log.write(json.dumps(row) + "\n")
                log.flush()
    bar.close()
    if log:
        log.close()
    return rows


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)
