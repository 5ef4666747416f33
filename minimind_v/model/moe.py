"""The feed-forward layers: a dense SwiGLU and its mixture-of-experts version.

MoE routing: a bias-free linear router scores every token against every expert, softmax turns the scores into
probabilities, each token goes to its top-k experts, and their outputs are summed, weighted by the (optionally
renormalised) probabilities. Shared experts see every token and are added unweighted. There is no capacity
limit, so inference never drops a token.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from minimind_v.config import LLMConfig


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the gated feed-forward of Llama/Qwen/MiniMind."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    """Top-k routed SwiGLU experts plus optional shared experts. forward returns (output, aux_loss)."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        hidden = cfg.moe_ffn_dim or cfg.ffn_dim
        self.n_experts, self.top_k = cfg.n_experts, cfg.top_k
        self.norm_topk_prob = cfg.norm_topk_prob
        self.aux_loss_coef = cfg.aux_loss_coef
        self.gate = nn.Linear(cfg.dim, cfg.n_experts, bias=False)  # the router
        self.experts = nn.ModuleList(SwiGLU(cfg.dim, hidden) for _ in range(cfg.n_experts))
        self.shared_experts = nn.ModuleList(SwiGLU(cfg.dim, hidden) for _ in range(cfg.n_shared_experts))

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x [N, dim] -> router probabilities [N, E], top-k weights [N, k] and expert indices [N, k]."""
        probs = F.softmax(self.gate(x).float(), dim=-1)  # fp32 softmax, also under bf16 autocast
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return probs, weights, experts

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs, weights, experts = self.route(x)

        # Dispatch: sort the N*k (token, expert) assignments by expert, so each expert runs once on one
        # contiguous gather of its tokens; index_add_ scatters the weighted results back.
        flat_expert = experts.flatten()
        order = flat_expert.argsort(stable=True)
        token_of = order // self.top_k
        weight_of = weights.flatten()[order]
        counts = torch.bincount(flat_expert, minlength=self.n_experts)
        y = torch.zeros_like(x)
        start = 0
        for e, n in enumerate(counts.tolist()):  # one host sync per layer; loops over experts, not tokens
            # In training an idle expert still runs on zero rows: its weights then get a zero gradient
            # instead of none, which keeps DDP and optimisers from tripping over unused parameters.
            if n or self.training:
                idx = token_of[start:start + n]
                out = self.experts[e](x[idx]) * weight_of[start:start + n, None].to(x.dtype)
                y.index_add_(0, idx, out.to(y.dtype))
            start += n
        for shared in self.shared_experts:
            y = y + shared(x)
        return y.reshape(shape), self.aux_loss(probs, counts)

    def aux_loss(self, probs: Tensor, counts: Tensor) -> Tensor:
        """Switch-style load balancing: coef * E * sum_i f_i * P_i (equals coef when routing is uniform).

        f_i is the fraction of token->expert assignments that went to expert i (not differentiable), P_i the
        mean router probability of expert i (differentiable, so the router learns to spread the load).
        """
        if not self.training or self.aux_loss_coef == 0:
            return probs.new_zeros(())
        f = counts.float() / counts.sum()
        p = probs.mean(dim=0)
        return self.aux_loss_coef * self.n_experts * (f * p).sum()
