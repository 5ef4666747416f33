"""Teach attention heads where to look: the image tokens of the object a question is about.

A binding answer ("What color is the square?" -> "The square is green.") needs the LLM to find the square's image
token by content. Learnt from the answers alone, that lookup forms only after a long plateau; on the binding test
bed (benchmarks/binding_bed.py) none formed in 4,000 steps. With this loss it forms in a few hundred: while the
answer is written, chosen heads of a middle layer are trained to put their attention on the tokens of the cells that
hold the question's objects (data/grounding.py says which; `batch["ground"]` holds (row, query, key) positions).

The loss is the cross-entropy between a head's attention and the targets (shared equally when there are several),
averaged over the answer positions and the heads. It is recomputed from the layer's own input, so the model's code
stays as it is (a forward pre-hook keeps that input while the model runs). Its value joins the auxiliary loss,
weighted by TrainConfig.ground_weight.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.llm import apply_rope


@contextlib.contextmanager
def layer_input(attn: nn.Module) -> Iterator[dict[str, Tensor]]:
    """While inside, `seen` holds the normed input and the RoPE tables of `attn`'s latest call."""
    seen: dict[str, Tensor] = {}

    def keep(module: nn.Module, args: tuple) -> None:
        seen["x"], seen["cos"], seen["sin"] = args[0], args[1], args[2]

    handle = attn.register_forward_pre_hook(keep)
    try:
        yield seen
    finally:
        handle.remove()


def _head_rows(proj: nn.Linear, head: int, head_dim: int) -> tuple[Tensor, Tensor | None]:
    rows = slice(head * head_dim, (head + 1) * head_dim)
    return proj.weight[rows], None if proj.bias is None else proj.bias[rows]


def grounding_loss(attn: nn.Module, seen: dict[str, Tensor], ground: Tensor, doc_ids: Tensor | None,
                   heads: tuple[int, ...] = (0,)) -> Tensor:
    """Mean over `heads` and the supervised queries of the cross-entropy between each head's attention and the
    query's targets, shared equally: -mean over targets of log(attention on the target).

    ground: [n, 3] (row, query position, key position). Equal shares matter where a query has several targets:
    "How many red shapes?" looks at every red shape and at the sample's first token alike, so the share left on
    that token (1 / (n + 1)) says how many there are."""
    x, cos, sin = seen["x"], seen["cos"], seen["sin"]
    queries, which = torch.unique(ground[:, :2], dim=0, return_inverse=True)
    qr, qp = queries.unbind(1)
    pos = torch.arange(x.shape[1], device=x.device)
    visible = pos[None] <= qp[:, None]  # causal; with packing, only the query's own document
    if doc_ids is not None:
        visible &= doc_ids[qr] == doc_ids[qr, qp][:, None]
    target = torch.zeros_like(visible)
    target[which, ground[:, 2]] = True
    target &= visible
    rope = (cos[qr, qp][None], sin[qr, qp][None]), (cos, sin)
    losses = []
    for head in heads:
        scores = _head_scores(attn, x, qr, qp, head, rope)
        log_p = scores - torch.logsumexp(scores.masked_fill(~visible, torch.finfo(scores.dtype).min), -1,
                                         keepdim=True)
        losses.append(-((log_p * target).sum(-1) / target.sum(-1).clamp(min=1)).mean())
    return torch.stack(losses).mean()


def head_attention(attn: nn.Module, seen: dict[str, Tensor], row: int, query: int, head: int) -> Tensor:
    """The attention weights [query + 1] of one head at one position of an unpacked row, over the keys it can
    see, from the layer input that `layer_input` kept (for probes: where does the grounded head look?)."""
    qr, qp = torch.tensor([row], device=seen["x"].device), torch.tensor([query], device=seen["x"].device)
    cos, sin = seen["cos"], seen["sin"]
    scores = _head_scores(attn, seen["x"], qr, qp, head, ((cos[qr, qp][None], sin[qr, qp][None]), (cos, sin)))
    return scores[0, :query + 1].softmax(-1)


def _head_scores(attn: nn.Module, x: Tensor, qr: Tensor, qp: Tensor, head: int, rope: tuple) -> Tensor:
    """Attention logits [Q, T] of `head` for the queries at (qr, qp), over every key of their rows."""
    d = attn.head_dim
    q = F.linear(x[qr, qp], *_head_rows(attn.q_proj, head, d))  # [Q, d]
    k = F.linear(x, *_head_rows(attn.k_proj, head // (attn.n_heads // attn.n_kv_heads), d))  # [B, T, d]
    if attn.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    (q_cos, q_sin), (cos, sin) = rope
    q = apply_rope(q[None, :, None], q_cos, q_sin)[0, :, 0]
    k = apply_rope(k[:, :, None], cos, sin)[:, :, 0]
    return torch.einsum("qtd,qd->qt", k[qr].float(), q.float()) / math.sqrt(d)
