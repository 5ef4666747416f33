"""Half-precision weight storage for inference: weights in bf16/fp16, activations in float32.

Halving the stored bytes halves the memory a loaded model takes, and at batch 1 it also halves the time:
decoding one token is a matrix-vector product per layer, bound by how fast the weights stream from memory,
and CPUs without native bf16 math still read bf16 weights twice as fast as fp32. A matrix-matrix product
(prefill, the vision encoder, batched decoding) is bound by arithmetic instead, and there the same CPUs are
several times slower in bf16 than in fp32, so those products cast the weight up to float32 first. Norms,
residuals, attention and the KV cache stay in float32 throughout.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

# At most this many rows go through the half-precision matmul; more rows take the float32 one. Measured on a
# 2-core AVX2 CPU: bf16 wins at 1 row (memory-bound), loses from 2 rows on (no native bf16 arithmetic).
HALF_MATMUL_MAX_ROWS = 1


class HalfLinear(nn.Module):
    """nn.Linear with its weight stored in half precision; inputs and outputs stay float32."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if x.dtype == w.dtype:
            return F.linear(x, w, self.bias)
        if x.numel() // x.shape[-1] <= HALF_MATMUL_MAX_ROWS or x.device.type != "cpu":
            b = None if self.bias is None else self.bias.to(w.dtype)
            return F.linear(x.to(w.dtype), w, b).to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w.to(x.dtype), b)


class HalfEmbedding(nn.Module):
    """nn.Embedding with its table stored in half precision; looked-up rows come out in float32."""

    def __init__(self, weight: nn.Parameter, padding_idx: int | None) -> None:
        super().__init__()
        self.weight, self.padding_idx = weight, padding_idx
        self.num_embeddings, self.embedding_dim = weight.shape

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids, self.weight, self.padding_idx).float()


def store_in_half(module: nn.Module, dtype: torch.dtype, embeddings: bool = True) -> nn.Module:
    """Swap every nn.Linear (and nn.Embedding) under `module` for its half-storage twin, in place.

    Tied weights stay tied: a parameter shared by several layers is converted once. State-dict keys do not
    change. For inference only: the half weights are not meant to be trained.
    """
    if dtype not in HALF_DTYPES.values():
        raise ValueError(f"half storage takes torch.bfloat16 or torch.float16, not {dtype}")
    converted: dict[int, nn.Parameter] = {}

    def half(p: nn.Parameter | None) -> nn.Parameter | None:
        if p is None:
            return None
        if id(p) not in converted:
            converted[id(p)] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
        return converted[id(p)]

    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, HalfLinear(half(child.weight), None if child.bias is None else
                                                 nn.Parameter(child.bias.detach().float(), requires_grad=False)))
            elif embeddings and type(child) is nn.Embedding:
                setattr(parent, name, HalfEmbedding(half(child.weight), child.padding_idx))
    return module



@contextlib.contextmanager
def empty_model() -> Iterator[None]:
    """Build modules on the meta device without running their initialisers, for weights about to be loaded.

    Skipping the initialisers is not only faster: initialising a meta tensor with normal_ imports torch's Python
    decompositions, about 70 MB of resident memory that an inference process never needs otherwise.
    """
    names = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "trunc_normal_", "xavier_uniform_",
             "xavier_normal_", "ones_", "zeros_", "constant_")
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)
