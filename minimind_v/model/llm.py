"""The MiniMind decoder: a pre-norm Llama/Qwen-style transformer in plain PyTorch.

    h   = x + Attn(RMSNorm(x))          grouped-query attention, rotary positions, optional q/k-norm
    out = h + FFN(RMSNorm(h))           SwiGLU, or a mixture of SwiGLU experts (moe.py)
    logits = RMSNorm(out) @ E.T         E is the token embedding when the head is tied

Attention runs through `scaled_dot_product_attention`. One forward handles every batch layout the trainer
and the generator need: plain causal, padded (left or right, `attention_mask`), packed (`doc_ids`: tokens see
only earlier tokens of their own document, positions restart per document) and cached decoding (`cache`).
`blocks` opens the causal mask where a model wants it: a token may also read the *later* tokens of its block
that carry the block's positive id (the VLM's "turn" attention, vlm.py).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from minimind_v.config import LLMConfig
from minimind_v.model.kv_cache import KVCache
from minimind_v.model.moe import MoE, SwiGLU


class RMSNorm(nn.Module):
    """w * x / sqrt(mean(x^2) + eps), computed in fp32 so bf16 activations do not lose the small terms."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # torch's fused kernel: one pass instead of five elementwise ops (pow, mean, rsqrt, mul, mul)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


@functools.lru_cache(maxsize=16)
def _inv_freq(head_dim: int, theta: float, device: torch.device) -> Tensor:
    # Written exactly as both official releases write it: a mathematically equal form such as
    # theta ** (-i / d) rounds differently in fp32 and moves logits at long positions by ~1e-4.
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables [B, T, 1, head_dim] for integer positions [B, T] (rotate_half layout).

    The sin table carries rotate_half's sign: its first half is -sin, so `apply_rope` needs no negation.
    """
    angle = positions.float()[..., None] * _inv_freq(head_dim, theta, positions.device)
    cos, sin = angle.cos(), angle.sin()
    return torch.cat((cos, cos), dim=-1)[:, :, None, :], torch.cat((-sin, sin), dim=-1)[:, :, None, :]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs (x[i], x[i + d/2]) of x [B, T, H, d] by the position angles, in fp32:
    (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), with the minus sign already inside `sin`."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return torch.addcmul(xf * cos, torch.cat((x2, x1), dim=-1), sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.qk_norm = cfg.qk_norm
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, causal: bool,
                cache: KVCache | None, layer: int) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, heads, T, head_dim]
        if cache is not None:
            k, v = cache.update(layer, k, v)
            k, v = k.to(q.dtype), v.to(q.dtype)  # no-op unless the cache was allocated in another dtype
        # Query head h reads kv head h // n_rep.
        n_rep = self.n_heads // self.n_kv_heads
        if T == 1 and n_rep > 1:
            # One decoding step: the n_rep query heads of a group become n_rep query rows of one kv head, a
            # plain attention over the cache (no K/V copy, and faster than the GQA kernel on CPU).
            # A padding mask [B, 1, 1, S] broadcasts over those rows.
            out = F.scaled_dot_product_attention(q.reshape(B, self.n_kv_heads, n_rep, self.head_dim), k, v,
                                                 attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
            return self.o_proj(out.reshape(B, T, -1))
        # SDPA groups heads itself (enable_gqa) without copying K/V, but on CUDA a GQA call with a mask
        # tensor falls back to the slow math kernel, so there K/V are repeated for the memory-efficient kernel.
        gqa = n_rep > 1 and (mask is None or not q.is_cuda)
        if n_rep > 1 and not gqa:
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = MoE(cfg) if cfg.use_moe else SwiGLU(cfg.dim, cfg.ffn_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, causal: bool,
                cache: KVCache | None, layer: int) -> tuple[Tensor, Tensor | None]:
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, mask, causal, cache, layer))
        out = self.ffn(self.ffn_norm(x))
        out, aux = out if isinstance(out, tuple) else (out, None)
        return x + self.dropout(out), aux


@dataclass
class LMOutput:
    logits: Tensor  # [B, T', vocab]: every position, or only those asked for by logits_to_keep
    hidden: Tensor  # [B, T, dim], the final RMSNorm's output
    aux_loss: Tensor  # scalar: MoE load-balancing loss summed over layers (0 for dense models / eval)


def since_doc_start(counts: Tensor, doc_ids: Tensor) -> Tensor:
    """A non-decreasing count [B, T] minus its value at the first token of each token's document (packing)."""
    new_doc = torch.ones_like(doc_ids, dtype=torch.bool)
    new_doc[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return counts - torch.where(new_doc, counts, 0).cummax(dim=1).values


def default_positions(B: int, T: int, start: int, attention_mask: Tensor | None, doc_ids: Tensor | None,
                      device: torch.device) -> Tensor:
    """Positions [B, T]: restart at 0 per document, skip left padding, else count from the cache offset."""
    if doc_ids is not None:
        return since_doc_start(torch.arange(T, device=device).expand(B, T), doc_ids)
    if attention_mask is not None:  # real tokens count 0, 1, 2, ... whatever padding precedes them
        return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)[:, start:]
    return torch.arange(start, start + T, device=device).expand(B, T)


def attention_plan(T: int, start: int, attention_mask: Tensor | None, doc_ids: Tensor | None,
                   device: torch.device, pad_outputs_unused: bool = False,
                   blocks: Tensor | None = None) -> tuple[Tensor | None, bool]:
    """(mask, is_causal) for SDPA. mask is bool [B, 1, T, start+T], True where a query may attend a key.

    `blocks` [B, T] (ids of the new tokens; 0 = none): a token of block k (id k or -k) may also read the later
    tokens of its document whose id is +k; a token with id -k is read by no earlier one.

    `pad_outputs_unused` (training: pad positions carry no label) lets right padding go without a mask: under
    the causal mask no real token can see a pad that comes after it, and only the pads' own outputs change.
    SDPA then keeps its fused kernels (on an H100, minimind2 trained at 28% MFU on unpadded batches, where flash
    attention runs, and at 19% on padded ones with their mask).
    """
    if attention_mask is not None:
        if bool(attention_mask.all()):
            attention_mask = None  # no padding after all: keep the fast kernels
        elif pad_outputs_unused and start == 0 and doc_ids is None and \
                bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
            attention_mask = None  # right padding only, and nobody reads the pads' outputs
    if blocks is not None and not bool(blocks.any()):
        blocks = None
    if attention_mask is None and doc_ids is None and blocks is None:
        if start == 0:
            return None, T > 1  # plain causal prefill / training: no mask tensor at all
        if T == 1:
            return None, False  # one decoding step sees the whole cache
    # SDPA's is_causal aligns to the top-left corner, wrong for a chunk after a cache: build the mask.
    S = start + T
    q_pos = torch.arange(start, S, device=device)[:, None]
    k_pos = torch.arange(S, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None]
    if blocks is not None:
        k_blocks = F.pad(blocks, (start, 0))  # cached keys belong to no block of this chunk
        allowed = allowed | ((blocks.abs()[:, :, None] == k_blocks[:, None, :]) & (k_blocks[:, None, :] > 0))
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, :, None] == doc_ids[:, None, :])
    # A pad query would see no key at all and softmax over nothing gives NaN; letting every query see itself
    # keeps pad rows finite (their outputs are ignored) without changing any real token's result.
    allowed = allowed | (k_pos == q_pos)
    return allowed[:, None], False


class MiniMindLM(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2 style: N(0, 0.02) everywhere, and the projections that write into the residual stream
        # (o_proj, down) shrunk by 1/sqrt(2 * n_layers), so the stream's variance at init does not grow
        # with depth (each layer adds two such terms).
        resid_std = 0.02 / math.sqrt(2 * self.cfg.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                residual = name.endswith(("o_proj", "down"))
                nn.init.normal_(module.weight, mean=0.0, std=resid_std if residual else 0.02)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.embed_tokens(input_ids)

    def new_cache(self, batch_size: int, max_len: int, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        """An empty cache for `max_len` positions (prompt + new tokens), on the model's device and in its
        compute dtype (the norm's: with half-stored weights, model/half.py, activations stay float32)."""
        w = self.norm.weight
        return KVCache(self.cfg.n_layers, batch_size, self.cfg.n_kv_heads, max_len, self.cfg.head_dim,
                       device=device or w.device, dtype=dtype or w.dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once

    def forward(self, input_ids: Tensor | None = None, *, inputs_embeds: Tensor | None = None,
                attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                doc_ids: Tensor | None = None, cache: KVCache | None = None, blocks: Tensor | None = None,
                logits_to_keep: int | Tensor = 0) -> LMOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids [B, T] or inputs_embeds [B, T, dim]")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if x.dim() != 3 or x.shape[-1] != self.cfg.dim:
            raise ValueError(f"expected input_ids [B, T] or inputs_embeds [B, T, {self.cfg.dim}], "
                             f"got {tuple((input_ids if inputs_embeds is None else inputs_embeds).shape)}")
        B, T = x.shape[:2]
        start = 0
        if cache is not None:
            cache.check(B, T)
            start = cache.length
        _check_shape("attention_mask", attention_mask, (B, start + T),
                     "1 for real tokens, 0 for padding; with a cache it covers cached + new positions")
        _check_shape("position_ids", position_ids, (B, T), "one position per input token")
        _check_shape("doc_ids", doc_ids, (B, T), "one document id per input token")
        _check_shape("blocks", blocks, (B, T), "one block id per input token, 0 for none")
        if doc_ids is not None and start > 0:
            raise ValueError("doc_ids (packing) cannot be combined with a filled KV cache")

        if position_ids is None:
            position_ids = default_positions(B, T, start, attention_mask, doc_ids, x.device)
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        mask, causal = attention_plan(T, start, attention_mask, doc_ids, x.device, pad_outputs_unused=self.training,
                                      blocks=blocks)

        x = self.dropout(x)
        aux_loss = torch.zeros((), device=x.device)
        for i, layer in enumerate(self.layers):
            x, aux = layer(x, cos, sin, mask, causal, cache, i)
            if aux is not None:
                aux_loss = aux_loss + aux
        if cache is not None:
            cache.advance(T)

        hidden = self.norm(x)
        if isinstance(logits_to_keep, Tensor):
            kept = hidden[:, logits_to_keep]  # explicit positions
        else:
            kept = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        return LMOutput(logits=self.lm_head(kept), hidden=hidden, aux_loss=aux_loss)


def _check_shape(name: str, t: Tensor | None, shape: tuple[int, int], meaning: str) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)} ({meaning}), got {list(t.shape)}")
