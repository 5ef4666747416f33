"""Where a model runs and in which precision: the two choices every stage (train, infer, eval) makes.

`--dtype auto` (the default) measures instead of guessing. Whether bf16 pays depends on the machine: a CPU with
AVX512_BF16 or AMX multiplies bf16 matrices several times faster than fp32, an AVX2-only CPU has no bf16
arithmetic and runs the same product tens of times slower. So a short probe times fp32 and bf16 products of the
model's own shapes ([tokens, dim] x [dim, ffn]) and picks bf16 autocast only where it is clearly faster. A CUDA
GPU needs no probe: bf16 when it supports it. The result is cached per machine, CPU flags, torch version and
shapes in `$XDG_CACHE_HOME/minimind-v/dtype_probe.json` (else `~/.cache/...`, or $MINIMIND_V_CACHE);
MINIMIND_V_DTYPE_PROBE=fresh measures again. A decoder loaded for inference takes bf16 weights where bf16
autocast was picked, else fp32.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

DTYPES = ("fp32", "bf16", "fp16")  # the autocast precisions; fp32 means no autocast
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

BF16_MIN_SPEEDUP = 1.3  # bf16 must beat fp32 by this much: the margin covers timing noise on a busy machine
PROBE_WARMUP_S = 0.1  # per dtype: threads and caches reach full speed first
PROBE_SECONDS = 0.15  # per dtype, timed; a dtype with no native kernels is probed on fewer rows to fit
PROBE_TOKENS = 256  # rows of the probed product: a training micro-batch's tokens are at least this many
PROBE_ENV = "MINIMIND_V_DTYPE_PROBE"  # "fresh": measure again and rewrite the cache
CACHE_ENV = "MINIMIND_V_CACHE"  # a folder for the cache instead of the user's
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "bf16", "sve")  # x86, Arm
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # native bf16 arithmetic (x86, x86, Arm)


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
    return torch.autocast(device.type, dtype=TORCH_DTYPES[dtype])


@dataclass
class DtypeChoice:
    """The precision a run uses, and why: measured matmul speeds (GFLOP/s per dtype) when a probe ran."""

    dtype: str  # the autocast precision: fp32 | bf16 | fp16
    reason: str
    gflops: dict[str, float] = field(default_factory=dict)
    device: str = ""  # CPU model (with torch's kernel level) or GPU name
    cpu_flags: list[str] = field(default_factory=list)  # those of CPU_FLAGS present
    shape: list[int] = field(default_factory=list)  # [tokens, dim, ffn] probed
    cached: bool = False

    @property
    def weights(self) -> str:
        """The decoder's weight storage for inference: bf16 where bf16 products are fast, else fp32."""
        return "bf16" if self.dtype == "bf16" else "fp32"

    def row(self, **extra: Any) -> dict[str, Any]:
        """The metrics.jsonl row: {"event": "dtype", ...}."""
        return {**extra, "event": "dtype", **asdict(self), "weights": self.weights}

    def describe(self) -> str:
        """One line for the log: the choice, why, and the measured speeds."""
        out = f"dtype {self.dtype}: {self.reason}"
        if self.gflops:
            speeds = ", ".join(f"{k} {v:.1f}" for k, v in self.gflops.items())
            out += (f"; {'x'.join(map(str, self.shape))} matmul GFLOP/s: {speeds}{' (cached)' if self.cached else ''}"
                    f"; {self.device}, flags: {' '.join(self.cpu_flags) or 'none of ' + '/'.join(CPU_FLAGS)}")
        elif self.device:
            out += f" ({self.device})"
        return out


def resolve_dtype(dtype: str, device: torch.device, dim: int, ffn: int, tokens: int = PROBE_TOKENS,
                  fresh: bool = False) -> DtypeChoice:
    """`dtype` as asked ("fp32" / "bf16" / "fp16", no probe) or, for "auto", what `choose_dtype` measures."""
    if dtype == "auto":
        return choose_dtype(device, dim, ffn, tokens, fresh)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, fp32, bf16 or fp16")
    return DtypeChoice(dtype, reason="asked for")


def choose_dtype(device: torch.device, dim: int, ffn: int, tokens: int = PROBE_TOKENS,
                 fresh: bool = False) -> DtypeChoice:
    """bf16 autocast where it is clearly faster than fp32 on this device for these shapes, else fp32."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return DtypeChoice("bf16", reason="this GPU runs bf16 natively", device=name)
        return DtypeChoice("fp32", device=name,
                           reason="this GPU has no bf16 (fp16 needs loss scaling: pass --dtype fp16 for it)")
    name, flags = machine()
    shape = [tokens, dim, ffn]
    key = json.dumps({"device": device.type, "name": name, "flags": flags, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "shape": shape}, sort_keys=True)
    fresh = fresh or os.environ.get(PROBE_ENV, "") == "fresh"
    cache = _read_cache()
    if not fresh and isinstance(cache.get(key), dict):
        try:
            return DtypeChoice(**{**cache[key], "cached": True})
        except TypeError:  # an entry written by another version: measure again
            pass
    gflops = measure_matmuls(device, ("fp32", "bf16"), dim, ffn, tokens)
    speedup = gflops["bf16"] / max(gflops["fp32"], 1e-9)
    dtype = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    reason = f"bf16 matmuls run at {speedup:.2f}x the speed of fp32 here ({BF16_MIN_SPEEDUP}x needed for bf16)"
    if dtype == "bf16" and device.type == "cpu" and flags is not None and not set(flags) & set(BF16_FLAGS):
        # Without bf16 instructions a bf16 product is converted to fp32 and back: it cannot really be faster.
        # A heavily loaded machine can stall the short fp32 products of the probe; that must not stick.
        dtype, reason = "fp32", f"this CPU has no bf16 instructions ({'/'.join(BF16_FLAGS)}); {reason}"
    choice = DtypeChoice(dtype, reason, gflops, name, flags or [], shape)
    cache[key] = {k: v for k, v in asdict(choice).items() if k != "cached"}
    _write_cache(cache)
    return choice


def measure_matmuls(device: torch.device, dtypes: tuple[str, ...], dim: int, ffn: int,
                    tokens: int = PROBE_TOKENS) -> dict[str, float]:
    """GFLOP/s of [tokens, dim] x [dim, ffn] in each dtype: the best of repeated products after a warm-up."""
    return {dt: round(_matmul_gflops(device, TORCH_DTYPES[dt], tokens, dim, ffn), 3) for dt in dtypes}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _timed(device: torch.device, x: torch.Tensor, w: torch.Tensor) -> float:
    sync(device)
    t = time.perf_counter()
    x @ w
    sync(device)
    return time.perf_counter() - t


def _matmul_gflops(device: torch.device, dt: torch.dtype, rows: int, dim: int, ffn: int) -> float:
    w = torch.randn(dim, ffn, device=device).to(dt)
    x = torch.randn(rows, dim, device=device).to(dt)
    # Warm up on a few rows (threads, caches, a kernel built on first use), then time one product of 64 rows: a
    # dtype without native kernels (bf16 on AVX2 runs at ~1/70 of fp32) is probed on fewer rows, so that several
    # of its products fit the time budget. (Sizing from the 8-row products would let a busy machine's stalls,
    # which dominate such short products, shrink a fast dtype's probe too.)
    start = time.perf_counter()
    while time.perf_counter() - start < PROBE_WARMUP_S:
        x[:8] @ w
    trial = min(rows, 64)
    full = _timed(device, x[:trial], w) * rows / trial
    if full > PROBE_SECONDS / 2:
        rows = max(8, int(rows * PROBE_SECONDS / 2 / full))
    x = x[:rows]
    start, best, n = time.perf_counter(), float("inf"), 0
    while n < 3 or time.perf_counter() - start < PROBE_SECONDS:
        best, n = min(best, _timed(device, x, w)), n + 1
    return 2 * rows * dim * ffn / best / 1e9


def machine() -> tuple[str, list[str] | None]:
    """The CPU's model name (with torch's CPU kernel level) and those of CPU_FLAGS it has (None: unknown)."""
    name, flags = "", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = (x.strip() for x in line.partition(":"))
            if k == "model name" and not name:
                name = v
            elif k in ("flags", "Features"):
                flags = (flags or set()) | set(v.split())
    except OSError:  # not Linux: the probe alone decides
        pass
    name = name or platform.processor() or platform.machine()
    return (f"{name} ({torch.backends.cpu.get_cpu_capability()})",
            None if flags is None else [f for f in CPU_FLAGS if f in flags])


def probe_cache_path() -> Path:
    """$MINIMIND_V_CACHE/dtype_probe.json, else the user's cache folder ($XDG_CACHE_HOME or ~/.cache)."""
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minimind-v"
    return Path(os.environ.get(CACHE_ENV) or user) / "dtype_probe.json"


def _read_cache() -> dict[str, Any]:
    """The cached probes; a missing, unreadable or corrupt file reads as empty (and is rewritten)."""
    try:
        data = json.loads(probe_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache: dict[str, Any]) -> None:
    path = probe_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # several processes may probe at once
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:  # a read-only home: the probe simply runs again next time
        pass
