"""Where a model runs and in which precision: the two choices every stage (train, infer, eval) makes."""
from __future__ import annotations

import contextlib

import torch

DTYPES = ("fp32", "bf16", "fp16")  # the autocast precisions; fp32 means no autocast


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
    """A context that runs matrix products in `dtype` ("bf16" / "fp16"); "fp32" changes nothing."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose fp32, bf16 or fp16")
    return torch.autocast(device.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)
