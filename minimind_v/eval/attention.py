"""Where an answer looks: the attention of one answer token over the image tokens, layer by layer.

The decoder calls scaled_dot_product_attention, which never materialises the attention weights. To see them,
a forward pre-hook on each layer's attention module keeps its input, and the weights are recomputed from it
with the module's own projections, q/k-norm and RoPE: the same numbers the fast kernel used, written out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

from ..infer.api import VLMChat
from ..model.llm import Attention, apply_rope


@dataclass
class AnswerAttention:
    answer: str  # the model's greedy answer to the question
    query_token: str  # the token whose attention is shown: the last of the prompt + the teacher-forced prefix
    predicted: str  # the token the model predicts after it
    image_positions: list[int]  # prompt positions of the image's placeholder tokens, in reading order
    per_layer: torch.Tensor  # [layers, image tokens]: attention mass on each image token, heads averaged
    image_share: torch.Tensor  # [layers]: the share of that token's attention that lands on the image

    def grid(self, layer: int) -> torch.Tensor:
        """One layer's attention over the image tokens as the encoder's square grid."""
        g = math.isqrt(self.per_layer.shape[1])
        return self.per_layer[layer].reshape(g, g)


def attention_weights(attn: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T, dim] input of one attention module -> its attention weights [B, heads, T, T], under `mask` (bool
    [B, 1, T, T], the decoder's own) or else the causal mask."""
    B, T, _ = x.shape
    q = attn.q_proj(x).view(B, T, attn.n_heads, attn.head_dim)
    k = attn.k_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim)
    if attn.qk_norm:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rope(q, cos, sin).transpose(1, 2), apply_rope(k, cos, sin).transpose(1, 2)
    k = k.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)  # query head h reads kv head h // n_rep
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(attn.head_dim)
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


@torch.no_grad()
def answer_attention(chat: VLMChat, image: Image.Image, question: str, prefix: str = "") -> AnswerAttention:
    """Where the model looks when it writes the word after `prefix` in its answer to `question` about `image`.

    The prefix is teacher-forced, so the position is the same whatever the model would have said: with
    prefix "The circle is", the token "is" predicts the colour. The greedy answer is returned beside it.
    """
    model, tok = chat.model, chat.tokenizer
    if "<image>" not in question:
        question = "<image>\n" + question
    answer = chat.answer([image], question)
    ids = chat.encode_chat([{"role": "user", "content": question}], 1)
    ids = ids + (tok.encode(prefix, add_special_tokens=False) if prefix else [])
    inputs: list[tuple] = []
    hooks = [block.attn.register_forward_pre_hook(lambda _m, args: inputs.append(args))
             for block in model.llm.layers]
    try:
        out = model(torch.tensor([ids], device=chat.device), chat.preprocess([image]).to(chat.device), logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    image_positions = [i for i, t in enumerate(ids) if t == model.cfg.image_token_id]
    rows = []
    for block, (x, cos, sin, mask, *_rest) in zip(model.llm.layers, inputs):
        rows.append(attention_weights(block.attn, x, cos, sin, mask)[0, :, -1].mean(0))  # the last position, heads averaged
    per_layer = torch.stack(rows).cpu()[:, image_positions]
    return AnswerAttention(answer=answer, query_token=tok.decode([ids[-1]]),
                           predicted=tok.decode([int(out.logits[0, -1].argmax())]),
                           image_positions=image_positions, per_layer=per_layer, image_share=per_layer.sum(-1))
