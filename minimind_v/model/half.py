"""Low-precision weight storage for inference: weights in bf16/fp16 (or int8), activations in float32.

Halving the stored bytes halves the memory a loaded model takes, and at batch 1 it also halves the time:
decoding one token is a matrix-vector product per layer, bound by how fast the weights stream from memory,
and CPUs without native bf16 math still read bf16 weights twice as fast as fp32. A matrix-matrix product
(prefill, the vision encoder, batched decoding) is bound by arithmetic instead, and there the same CPUs are
several times slower in bf16 than in fp32, so those products cast the weight up to float32 first. Norms,
residuals, attention and the KV cache stay in float32 throughout.

int8 (one float32 scale per output row) stores a quarter of the float32 bytes. A decoding product (a few rows,
on a CPU) reads the int8 rows directly with PyTorch's weight-only int8 kernel (`_weight_int8pack_mm`, bf16
activations), so it streams a quarter of the bytes; larger products rebuild the float32 weight a block of rows at
a time, which suits layers run a few times per request, like a vision encoder.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
STORAGE_DTYPES = {"fp32": torch.float32, **HALF_DTYPES, "int8": torch.int8}

# At most this many rows go through the half-precision matmul; more rows take the float32 one. Measured on a
# 2-core AVX2 CPU: bf16 wins at 1 row (memory-bound), loses from 2 rows on (no native bf16 arithmetic).
HALF_MATMUL_MAX_ROWS = 1

# PyTorch's CPU kernel for int8 weights x bf16 activations (the one weight-only int8 decoding uses). Private, so
# looked up rather than assumed. It reads the inner dimension in whole vectors and has no tail loop (an inner size
# of 24 reads past the row), so it is only given inner sizes that are a multiple of the widest vector.
_INT8_KERNEL = getattr(torch.ops.aten, "_weight_int8pack_mm", None)
INT8_KERNEL_MULTIPLE = 64
# Up to this many rows the kernel beats rebuilding float32 rows (measured on a 2-core AVX-512 EPYC, 1408 x 512:
# 29 against 136 us at 1 row, 243 against 462 at 16; at 64 rows it loses, 954 against 746).
INT8_KERNEL_MAX_ROWS = 16

# A weight cast up to float32 for a product is rebuilt this many elements at a time, so the temporary stays a
# few MB however large the layer (a whole 768 x 3072 encoder weight would be 9.4 MB, several of them freed
# and re-allocated per image).
UPCAST_CHUNK = 1 << 20


def _upcast_linear(x: Tensor, rows: Callable[[int, int], Tensor], out_features: int, bias: Tensor | None) -> Tensor:
    """F.linear(x, W, bias) where rows(a, b) returns W[a:b] in x's dtype, built a block of rows at a time."""
    step = max(1, UPCAST_CHUNK // x.shape[-1])
    if step >= out_features:
        return F.linear(x, rows(0, out_features), bias)
    y = torch.cat([F.linear(x, rows(a, min(a + step, out_features))) for a in range(0, out_features, step)], -1)
    return y if bias is None else y + bias


class HalfLinear(nn.Module):
    """nn.Linear with its weight stored in half precision; inputs and outputs stay float32."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if x.dtype == w.dtype:
            return F.linear(x, w, None if self.bias is None else self.bias.to(w.dtype))
        if x.numel() // x.shape[-1] <= HALF_MATMUL_MAX_ROWS or x.device.type != "cpu":
            b = None if self.bias is None else self.bias.to(w.dtype)
            return F.linear(x.to(w.dtype), w, b).to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return _upcast_linear(x, lambda a, z: w[a:z].to(x.dtype), self.out_features, b)


class HalfEmbedding(nn.Module):
    """nn.Embedding with its table stored in half precision; looked-up rows come out in float32."""

    def __init__(self, weight: nn.Parameter, padding_idx: int | None) -> None:
        super().__init__()
        self.weight, self.padding_idx = weight, padding_idx
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight, self.padding_idx).float()


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights and a float32 scale per output row: weight ~= int8 * scale."""

    def __init__(self, weight: nn.Parameter, scale: nn.Parameter, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.weight, self.scale, self.bias = weight, scale, bias
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self._kernel_scale: tuple[Tensor, Tensor] | None = None  # (scale, the same as [rows] bf16 for the kernel)

    def forward(self, x: Tensor) -> Tensor:
        if self._use_kernel(x):
            lead = x.shape[:-1]
            y = _INT8_KERNEL(x.reshape(-1, self.in_features).to(torch.bfloat16), self.weight, self._bf16_scale())
            y = y.to(x.dtype).reshape(*lead, self.out_features)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        w, scale = self.weight, self.scale.to(x.dtype)
        return _upcast_linear(x, lambda a, z: w[a:z] * scale[a:z], self.out_features, self.bias)  # int8 * fp32 -> fp32

    def _bf16_scale(self) -> Tensor:
        if self._kernel_scale is None or self._kernel_scale[0] is not self.scale:  # (a load may swap it)
            self._kernel_scale = (self.scale, self.scale.detach().reshape(-1).to(torch.bfloat16))
        return self._kernel_scale[1]

    def _use_kernel(self, x: Tensor) -> bool:
        return (_INT8_KERNEL is not None and x.device.type == "cpu" and not x.requires_grad
                and self.in_features % INT8_KERNEL_MULTIPLE == 0 and self.weight.is_contiguous()
                and x.numel() // self.in_features <= INT8_KERNEL_MAX_ROWS)


def prepare_int8(module: nn.Module) -> None:
    """Make every Int8Linear's kernel scale now. Call before torch.compile: a scale first made inside the compiled
    step would recompile it (the cache is guarded), and one cast there cannot feed the int8 kernel's lowering."""
    for m in module.modules():
        if isinstance(m, Int8Linear):
            m._bf16_scale()


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: each row's largest magnitude maps to 127. Returns (int8 weight, scale [rows, 1])."""
    scale = w.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    return torch.round(w.float() / scale).to(torch.int8), scale


def store_weights(module: nn.Module, dtype: torch.dtype, embeddings: bool = True) -> nn.Module:
    """Swap every nn.Linear (and nn.Embedding) under `module` for its low-precision twin, in place.

    bf16/fp16 -> HalfLinear / HalfEmbedding; int8 -> Int8Linear (embeddings then stay float32). Tied weights
    stay tied: a parameter shared by several layers is converted once. On a meta-device module (about to be
    loaded) only dtypes and shapes change. For inference only: these weights are not meant to be trained.
    """
    if dtype not in (*HALF_DTYPES.values(), torch.int8):
        raise ValueError(f"weights are stored in torch.bfloat16, torch.float16 or torch.int8, not {dtype}")
    converted: dict[int, Any] = {}  # id(parameter) -> its converted form, so tied weights stay tied

    def frozen(t: Tensor) -> nn.Parameter:
        return nn.Parameter(t, requires_grad=False)

    def half(p: nn.Parameter) -> nn.Parameter:
        if id(p) not in converted:
            converted[id(p)] = frozen(p.detach().to(dtype))
        return converted[id(p)]

    def int8(p: nn.Parameter) -> tuple[nn.Parameter, nn.Parameter]:
        if id(p) not in converted:
            w = p.detach()
            if w.is_meta:  # shapes only: computing a scale on meta tensors would import torch's decompositions
                q, scale = torch.empty(w.shape, dtype=torch.int8, device="meta"), torch.empty(w.shape[0], 1, device="meta")
            else:
                q, scale = quantize_int8(w)
            converted[id(p)] = (frozen(q), frozen(scale))
        return converted[id(p)]

    def linear(child: nn.Linear) -> nn.Module:
        bias = None if child.bias is None else frozen(child.bias.detach().float())
        if dtype != torch.int8:
            return HalfLinear(half(child.weight), bias)
        return Int8Linear(*int8(child.weight), bias)

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, linear(child))
            elif embeddings and dtype != torch.int8 and type(child) is nn.Embedding:
                setattr(parent, name, HalfEmbedding(half(child.weight), child.padding_idx))
    return module


class _SkipMetaInit(TorchFunctionMode):
    """Turns weight initialisers on meta tensors into no-ops. A function mode is per thread, like
    torch.device("meta") itself: modules built meanwhile by other threads are initialised as usual."""

    METHODS = {"normal_", "uniform_", "fill_", "zero_"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", "") == "torch.nn.init" or getattr(func, "__name__", "") in self.METHODS:
            t = args[0] if args else kwargs.get("tensor")
            if isinstance(t, Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)


def store_encoder_weights(vision: nn.Module, dtype: torch.dtype) -> None:
    """A VisionEncoder's tower with its linear weights in `dtype`. A cnn tower is all convolutions, and small:
    it stays float32, with a warning when something else was asked for."""
    if dtype == torch.float32:
        return
    if vision.cfg.kind == "cnn":
        warnings.warn("a cnn encoder is all convolutions (and small): it stays in float32", stacklevel=3)
        return
    store_weights(vision.tower, dtype, embeddings=False)


@contextlib.contextmanager
def empty_model() -> Iterator[None]:
    """Build modules on the meta device without running their initialisers, for weights about to be loaded.

    Skipping the initialisers is not only faster: initialising a meta tensor with normal_ imports torch's Python
    decompositions, about 70 MB of resident memory that an inference process never needs otherwise.
    """
    with torch.device("meta"), _SkipMetaInit():
        yield
