"""What a step costs and what the device can do: FLOPs per training step, a measured matmul peak, summaries,
and the achieved FLOP/s as a share of that peak.

Model FLOPs count 6 per trainable parameter per token (forward + backward) for the decoder, 6 per vocabulary row
per labelled token for the head (logits exist only where a label does), 6 per projector parameter per image
token, and 2 per encoder parameter per patch for a frozen encoder (forward only). Attention's T^2 term is left out.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ..data.chat import IGNORE_INDEX
from ..device import machine, sync
from ..model.vlm import MiniMindVLM

NATIVE_GFLOPS = 20.0  # a CPU matmul slower than this (one 512 product) has no native kernels for its dtype


def summary(xs: list[float], digits: int = 4) -> dict[str, float]:
    return {"min": round(min(xs), digits), "median": round(statistics.median(xs), digits),
            "max": round(max(xs), digits), "n": len(xs)}


def matmul_peak_tflops(device: torch.device, dtype: str, reps: int = 6, min_seconds: float = 1.0) -> float:
    """The best of at least `reps` square matmuls in `dtype`, repeated for `min_seconds`: a practical peak.

    The time floor matters: a CPU probe of a few dozen milliseconds right after start-up measured half the
    speed the same matmul reaches a second later (threads and caches still warming up)."""
    # CPU: 1024 is at full speed in fp32, and in bf16 where the CPU has bf16 kernels (AVX512_BF16, AMX);
    # where it has none (tens of times slower) 512 keeps the probe quick. One 512 product tells them apart.
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    n = 4096 if device.type == "cuda" else 1024
    if device.type == "cpu" and dtype != "fp32":
        a = torch.randn(512, 512, dtype=dt)
        a[:8] @ a  # the first call may build its kernel
        t = time.perf_counter()
        a @ a
        n = 1024 if 2 * 512 ** 3 / (time.perf_counter() - t) > NATIVE_GFLOPS * 1e9 else 512
    a, b = torch.randn(n, n, device=device, dtype=dt), torch.randn(n, n, device=device, dtype=dt)
    best, start, done = float("inf"), time.perf_counter(), 0
    while done <= reps or time.perf_counter() - start < min_seconds:
        done += 1
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e12


def flops_per_step(model: MiniMindVLM, batch: dict[str, torch.Tensor]) -> float:
    """Model FLOPs of one training step (see the module docstring for what is counted)."""
    llm = model.llm
    train_llm = sum(p.numel() for n, p in llm.named_parameters() if p.requires_grad and "embed_tokens" not in n)
    head = llm.cfg.vocab_size * llm.cfg.dim if llm.lm_head.weight.requires_grad else 0
    real = int(batch["attention_mask"].sum())
    labelled = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    flops = 6 * train_llm * real + 6 * head * labelled
    images = batch.get("pixel_values", batch.get("vision_feats"))
    n_images = 0 if images is None else int(images.shape[0])
    if n_images:
        proj = sum(p.numel() for p in model.projector.parameters())
        tcfg = model.vision.tower.config
        patches = (tcfg.image_size // tcfg.patch_size) ** 2 + (1 if model.vision.is_clip else 0)
        vis = sum(p.numel() for p in model.vision.parameters())
        vis_mult = 6 if any(p.requires_grad for p in model.vision.parameters()) else 2
        flops += 6 * proj * model.tokens_per_image * n_images + vis_mult * vis * patches * n_images
    return float(flops)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return machine()[0]


def efficiency(train: dict[str, Any], peaks: dict[str, float], source: str) -> dict[str, Any]:
    """Per dtype trained: the model's achieved FLOP/s (median) as a share of the matmul peak of that same
    precision; `_model` leaves the data phase out, as the trainer's DataLoader workers overlap it."""
    out: dict[str, Any] = {}
    for dt, r in train.items():
        if dt not in peaks:
            continue
        got, got_model = r["achieved_tflops"]["median"], r["achieved_tflops_model"]["median"]
        out[dt] = {"achieved_tflops": got, "achieved_tflops_model": got_model, "peak_tflops": round(peaks[dt], 6),
                   "peak_source": source, "share_of_peak": round(got / peaks[dt], 4),
                   "share_of_peak_model": round(got_model / peaks[dt], 4)}
    return out


def efficiency_lines(res: dict[str, Any]) -> list[str]:
    """res["efficiency"] in words, one line per dtype."""
    return [f"train {dt}: {e['achieved_tflops'] * 1e3:.1f} GFLOP/s achieved ({e['achieved_tflops_model'] * 1e3:.1f} "
            f"without the data phase) = {e['share_of_peak']:.1%} ({e['share_of_peak_model']:.1%}) of the {dt} "
            f"matmul peak, {e['peak_tflops'] * 1e3:.1f} GFLOP/s ({e['peak_source']})"
            for dt, e in res.get("efficiency", {}).items()]
