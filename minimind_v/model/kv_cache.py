"""A preallocated key/value cache for incremental decoding.

Every layer gets one [B, kv_heads, max_len, head_dim] buffer for keys and one for values, allocated once.
A forward pass writes its new keys at the current offset and attends over the filled prefix, so a decoding
step costs no allocation and no `torch.cat` (which would copy the whole history every token).
"""
from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0  # positions filled so far; the model advances it after each forward

    def check(self, batch_size: int, new_tokens: int) -> None:
        """Fail early, with a readable message, when a forward would not fit."""
        if batch_size != self.batch_size:
            raise ValueError(f"the cache holds batch size {self.batch_size}, got a batch of {batch_size}")
        if self.length + new_tokens > self.max_len:
            raise ValueError(f"KV cache overflow: {self.length} cached + {new_tokens} new tokens "
                             f"> max_len {self.max_len}; allocate a longer cache with new_cache(max_len=...)")

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write [B, kv_heads, T, head_dim] keys/values at the current offset; return the filled prefix."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, new_tokens: int) -> None:
        self.length += new_tokens

    def reset(self) -> None:
        """Reuse the buffers for a new prompt (old values are simply overwritten)."""
        self.length = 0
