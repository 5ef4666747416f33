"""The attention weights the docs draw are the ones the decoder's fast kernel used."""
from __future__ import annotations

import torch
from PIL import Image

from minimind_v.eval.attention import answer_attention, attention_weights


def test_recomputed_weights_reproduce_the_attention_output(vlm):
    torch.manual_seed(0)
    block = vlm.model.llm.layers[0]
    kept = []
    hook = block.attn.register_forward_pre_hook(lambda _m, args: kept.append(args))
    out = {}
    after = block.attn.register_forward_hook(lambda _m, _a, o: out.setdefault("o", o))
    ids = torch.randint(10, 100, (1, 12))
    with torch.no_grad():
        vlm.model.llm(ids)
        hook.remove()
        after.remove()
        x, cos, sin, *_ = kept[0]
        attn = block.attn
        w = attention_weights(attn, x, cos, sin)  # [1, heads, T, T]
        v = attn.v_proj(x).view(1, 12, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5)
    assert float(w[0, :, 0, 1:].abs().max()) == 0.0  # causal: the first token sees only itself
    v = v.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=1)
    mine = attn.o_proj((w @ v).transpose(1, 2).reshape(1, 12, -1))
    assert torch.allclose(mine, out["o"], atol=1e-5)


def test_answer_attention_covers_every_image_token_of_every_layer(vlm):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    att = answer_attention(vlm, image, "What color is the circle?", prefix="The circle is")
    n_layers, n_tokens = len(vlm.model.llm.layers), vlm.model.tokens_per_image
    assert att.per_layer.shape == (n_layers, n_tokens)
    assert len(att.image_positions) == n_tokens
    assert bool(((att.image_share > 0) & (att.image_share <= 1 + 1e-5)).all())
    assert att.grid(0).shape[0] ** 2 == n_tokens
    assert att.query_token.strip() == "is" and att.predicted
