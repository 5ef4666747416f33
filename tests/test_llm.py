"""The decoder against a naive re-implementation, across every batch layout, and against the official vectors."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import official_key
from minimind_v.config import LLMConfig
from minimind_v.model.llm import MiniMindLM, RMSNorm, apply_rope, attention_plan, rope_cos_sin

TINY = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=97, max_seq_len=64)


def tiny(**overrides) -> MiniMindLM:
    torch.manual_seed(0)
    return MiniMindLM(LLMConfig(**{**TINY, "qk_norm": True, **overrides})).eval()


# --- a naive reference: explicit loops for masks and positions, explicit GQA repeat and softmax ----------------

def naive_positions(attention_mask, doc_ids, B, T):
    pos = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        n = 0
        for t in range(T):
            if doc_ids is not None:
                n = 0 if t == 0 or doc_ids[b, t] != doc_ids[b, t - 1] else n + 1
                pos[b, t] = n
            elif attention_mask is not None:
                pos[b, t] = max(int(attention_mask[b, : t + 1].sum()) - 1, 0)
            else:
                pos[b, t] = t
    return pos


def naive_allowed(attention_mask, doc_ids, B, T):
    ok = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(i + 1):
                real = attention_mask is None or bool(attention_mask[b, j])
                same = doc_ids is None or doc_ids[b, i] == doc_ids[b, j]
                ok[b, i, j] = real and same
    return ok


def naive_rope(x, pos, theta):  # x [B, T, H, d]; pairs (i, i + d/2), rotated one by one
    d = x.shape[-1]
    out = x.clone()
    for i in range(d // 2):
        freq = 1.0 / (theta ** (torch.tensor(2 * i, dtype=torch.float32) / d))
        ang = pos.float() * freq
        c, s = ang.cos()[:, :, None], ang.sin()[:, :, None]
        out[..., i] = x[..., i] * c - x[..., i + d // 2] * s
        out[..., i + d // 2] = x[..., i + d // 2] * c + x[..., i] * s
    return out


def naive_rms(x, w, eps):
    return w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def naive_forward(model, ids, attention_mask=None, doc_ids=None):
    cfg = model.cfg
    B, T = ids.shape
    pos = naive_positions(attention_mask, doc_ids, B, T)
    allowed = naive_allowed(attention_mask, doc_ids, B, T)
    x = model.embed_tokens.weight[ids]
    for blk in model.layers:
        a = blk.attn
        h = naive_rms(x, blk.attn_norm.weight, cfg.norm_eps)
        q = (h @ a.q_proj.weight.T).view(B, T, cfg.n_heads, cfg.head_dim)
        k = (h @ a.k_proj.weight.T).view(B, T, cfg.n_kv_heads, cfg.head_dim)
        v = (h @ a.v_proj.weight.T).view(B, T, cfg.n_kv_heads, cfg.head_dim)
        if cfg.qk_norm:
            q, k = naive_rms(q, a.q_norm.weight, cfg.norm_eps), naive_rms(k, a.k_norm.weight, cfg.norm_eps)
        q, k = naive_rope(q, pos, cfg.rope_theta), naive_rope(k, pos, cfg.rope_theta)
        rep = cfg.n_heads // cfg.n_kv_heads
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / cfg.head_dim ** 0.5
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        att = torch.nan_to_num(scores.softmax(-1))  # fully masked (pad) rows -> 0, compared nowhere
        x = x + torch.einsum("bhij,bjhd->bihd", att, v).reshape(B, T, -1) @ a.o_proj.weight.T
        f = blk.ffn
        h = naive_rms(x, blk.ffn_norm.weight, cfg.norm_eps)
        x = x + (torch.nn.functional.silu(h @ f.gate.weight.T) * (h @ f.up.weight.T)) @ f.down.weight.T
    return naive_rms(x, model.norm.weight, cfg.norm_eps) @ model.lm_head.weight.T


def layouts():
    """(name, ids, attention_mask, doc_ids) for every batch layout the model supports."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 97, (3, 12), generator=g)
    right = torch.tensor([[1] * 12, [1] * 7 + [0] * 5, [1] * 3 + [0] * 9])
    left = right.flip(-1)
    docs = torch.tensor([[0] * 5 + [1] * 7, [0] * 12, [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]])
    return [("causal", ids, None, None), ("right_pad", ids, right, None), ("left_pad", ids, left, None),
            ("packed", ids, None, docs), ("packed_and_padded", ids, right, docs)]


@pytest.mark.parametrize("name,ids,mask,docs", layouts(), ids=[x[0] for x in layouts()])
@pytest.mark.parametrize("qk_norm,n_kv_heads", [(False, 2), (True, 2), (True, 4), (False, 1)],
                         ids=["gqa", "gqa_qk_norm", "mha", "mqa"])
def test_forward_matches_naive(name, ids, mask, docs, qk_norm, n_kv_heads):
    model = tiny(qk_norm=qk_norm, n_kv_heads=n_kv_heads)
    with torch.no_grad():
        got = model(ids, attention_mask=mask, doc_ids=docs).logits
        want = naive_forward(model, ids, mask, docs)
    real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    assert torch.isfinite(got).all(), "pad rows must stay finite"
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)


def test_no_padding_takes_the_fast_path():
    assert attention_plan(8, 0, None, None, torch.device("cpu")) == (None, True)
    assert attention_plan(8, 0, torch.ones(2, 8), None, torch.device("cpu")) == (None, True)
    assert attention_plan(1, 8, None, None, torch.device("cpu")) == (None, False)  # decode step
    mask, causal = attention_plan(3, 8, None, None, torch.device("cpu"))  # chunk after a cache
    assert not causal and mask.shape == (1, 1, 3, 11) and mask[0, 0, 0].tolist() == [True] * 9 + [False] * 2


def test_mask_never_leaves_a_query_without_keys():
    # Some SDPA kernels return NaN for a fully masked row; pad queries must see at least themselves.
    pad = torch.tensor([[0, 0, 1, 1], [1, 1, 0, 0]])
    mask, _ = attention_plan(4, 0, pad, None, torch.device("cpu"))
    assert mask.any(-1).all()
    assert mask[0, 0, 2].tolist() == [False, False, True, False]  # real tokens never see padding
    assert mask[1, 0, 3].tolist() == [True, True, False, True]  # a pad row sees the real prefix and itself


def test_rope_uses_the_exact_inv_freq_and_rotate_half_pairs():
    hd, theta = 16, 1e6
    pos = torch.arange(40).expand(1, 40)
    cos, sin = rope_cos_sin(pos, hd, theta)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2).float() / hd))
    angle = torch.outer(torch.arange(40).float(), inv_freq)
    assert torch.equal(cos[0, :, 0, : hd // 2], angle.cos()) and torch.equal(cos[0, :, 0, hd // 2:], angle.cos())
    x = torch.randn(1, 40, 2, hd)
    torch.testing.assert_close(apply_rope(x, cos, sin), naive_rope(x, pos, theta))
    # relative: <rope(q, m), rope(k, n)> depends only on m - n
    q, k = torch.randn(hd), torch.randn(hd)
    def dot(m, n):
        c, s = rope_cos_sin(torch.tensor([[m, n]]), hd, 1e4)
        r = apply_rope(torch.stack([q, k])[None, :, None], c, s)[0, :, 0]
        return (r[0] * r[1]).sum()
    torch.testing.assert_close(dot(7, 3), dot(24, 20))


def test_rmsnorm_runs_in_fp32_and_returns_input_dtype():
    norm = RMSNorm(8, 1e-5)
    x = torch.randn(4, 8) * 1e3
    torch.testing.assert_close(norm(x), naive_rms(x, norm.weight, 1e-5))
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), norm(x.bfloat16().float()).bfloat16().float())


def test_padded_batch_equals_each_sample_alone():
    model = tiny()
    g = torch.Generator().manual_seed(2)
    seqs = [torch.randint(4, 97, (n,), generator=g) for n in (9, 4, 6)]
    for side in ("left", "right"):
        ids = torch.zeros(3, 9, dtype=torch.long)
        mask = torch.zeros(3, 9, dtype=torch.long)
        for b, s in enumerate(seqs):
            sl = slice(9 - len(s), 9) if side == "left" else slice(0, len(s))
            ids[b, sl], mask[b, sl] = s, 1
        with torch.no_grad():
            batch = model(ids, attention_mask=mask).logits
            for b, s in enumerate(seqs):
                alone = model(s[None]).logits[0]
                torch.testing.assert_close(batch[b][mask[b].bool()], alone, atol=1e-5, rtol=1e-5)


def test_packed_sequence_equals_each_sample_alone():
    model = tiny()
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(4, 97, (n,), generator=g) for n in (5, 8, 3)]
    ids = torch.cat(seqs)[None]
    docs = torch.cat([torch.full((len(s),), i) for i, s in enumerate(seqs)])[None]
    with torch.no_grad():
        packed = model(ids, doc_ids=docs).logits[0]
        alone = torch.cat([model(s[None]).logits[0] for s in seqs])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def greedy_with_cache(model, ids, mask, steps, chunk=None):
    """Prefill (optionally in chunks), then one token per step; returns the stacked step logits."""
    B, T = ids.shape
    cache = model.new_cache(B, T + steps)
    mask = torch.ones(B, T, dtype=torch.long) if mask is None else mask
    out, chunk = [], chunk or T
    for s in range(0, T, chunk):
        logits = model(ids[:, s:s + chunk], attention_mask=mask[:, : s + chunk], cache=cache).logits
    for _ in range(steps):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(logits[:, -1])
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)
        logits = model(nxt, attention_mask=mask, cache=cache, logits_to_keep=1).logits
    return ids, mask, torch.stack(out, 1)


@pytest.mark.parametrize("chunk,n_kv_heads", [(None, 2), (3, 2), (None, 4)],
                         ids=["prefill", "chunked_prefill", "mha"])
def test_kv_cache_decoding_equals_full_forward(chunk, n_kv_heads):
    model = tiny(n_kv_heads=n_kv_heads)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(4, 97, (3, 7), generator=g)
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [0] * 5 + [1] * 2])  # a left-padded batch
    with torch.no_grad():
        full_ids, full_mask, step_logits = greedy_with_cache(model, ids, mask, steps=6, chunk=chunk)
        full = model(full_ids, attention_mask=full_mask).logits
        torch.testing.assert_close(step_logits, full[:, 6:-1], atol=1e-5, rtol=1e-5)
        # and each row decoded alone, without padding, gives the same tokens
        for b in range(3):
            alone, _, _ = greedy_with_cache(model, ids[b][mask[b].bool()][None], None, steps=6)
            assert alone[0, -6:].tolist() == full_ids[b, -6:].tolist()


def test_cache_is_preallocated_and_checked():
    model = tiny()
    cache = model.new_cache(2, 10)
    buffers = [t.data_ptr() for t in cache.k + cache.v]
    assert cache.k[0].shape == (2, model.cfg.n_kv_heads, 10, model.cfg.head_dim)
    with torch.no_grad():
        model(torch.ones(2, 6, dtype=torch.long), cache=cache)
        model(torch.ones(2, 1, dtype=torch.long), cache=cache)
    assert cache.length == 7 and [t.data_ptr() for t in cache.k + cache.v] == buffers
    with pytest.raises(ValueError, match="overflow"):
        model(torch.ones(2, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="batch size"):
        model(torch.ones(3, 1, dtype=torch.long), cache=cache)


def test_logits_to_keep_tied_head_and_parameter_count():
    model = tiny()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        out = model(ids)
        assert out.logits.shape == (2, 9, 97) and out.hidden.shape == (2, 9, 32)
        torch.testing.assert_close(model(ids, logits_to_keep=2).logits, out.logits[:, -2:])
        torch.testing.assert_close(model(ids, logits_to_keep=torch.tensor([0, 4])).logits, out.logits[:, [0, 4]])
        torch.testing.assert_close(out.logits, out.hidden @ model.embed_tokens.weight.T)
    assert model.lm_head.weight is model.embed_tokens.weight
    assert out.aux_loss.item() == 0.0
    untied = MiniMindLM(LLMConfig(**TINY, tie_embeddings=False))
    assert untied.num_parameters() == model.num_parameters() + 97 * 32 - 2 * 2 * 8  # minus the q/k norms


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(ids, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="inputs_embeds"):
        model(inputs_embeds=torch.randn(2, 5, 7))


def test_training_step_backward_in_bf16_autocast():
    model = tiny(dropout=0.1).train()
    ids = torch.randint(0, 97, (2, 8))
    docs = torch.tensor([[0] * 3 + [1] * 5, [0] * 8])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, doc_ids=docs).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids.flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


# --- the official compatibility vectors ---------------------------------------------------------------------

SHARED = Path(os.environ.get("MINIMIND_V_SHARED", Path(__file__).resolve().parents[2] / "shared"))
VECTORS = SHARED / "compat" / "vectors"


def _get(d: dict, name: str):
    """config.json keys look like 'hidden_size (dim)': match on the part before the note."""
    for key, value in d.items():
        if key == name or key.startswith(name + " ("):
            return value
    raise KeyError(name)


def config_from_vector(meta: dict) -> LLMConfig:
    llm = meta["llm"]
    moe = llm.get("moe", {})
    is_a = meta["format"].startswith("A")
    n_experts = moe.get("n_routed_experts", moe.get("num_experts", 0)) if llm["use_moe"] else 0
    return LLMConfig(
        dim=_get(llm, "hidden_size"), n_layers=_get(llm, "num_layers"), n_heads=_get(llm, "num_attention_heads"),
        n_kv_heads=_get(llm, "num_key_value_heads"), ffn_dim=_get(llm, "ffn_hidden_size"),
        vocab_size=llm["vocab_size"], rope_theta=llm["rope_theta"], norm_eps=_get(llm, "norm_eps"),
        qk_norm=bool(llm["qk_norm"]), tie_embeddings=llm["tie_word_embeddings"], n_experts=n_experts,
        top_k=moe.get("num_experts_per_tok", 2), norm_topk_prob=moe.get("norm_topk_prob", True),
        n_shared_experts=(1 if is_a and n_experts else moe.get("shared_experts", 0)),
        moe_ffn_dim=moe.get("expert_ffn_hidden_size", moe.get("moe_intermediate_size", 0)))


def to_our_keys(sd: dict, is_a: bool, head_dim: int) -> dict:
    out = {}
    for key, value in sd.items():
        if key.startswith(("vision_proj.", "lm_head.", "output.")):
            continue
        key = official_key(key, is_a)
        if is_a and key.endswith(("q_proj.weight", "k_proj.weight")):
            # interleaved pairs (2i, 2i+1) -> rotate_half pairs (i, i + d/2): reorder rows inside each head
            perm = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
            value = value.view(-1, head_dim, value.shape[-1])[:, perm].reshape(value.shape)
        out[key] = value
    out["lm_head.weight"] = out["embed_tokens.weight"]
    return out


@pytest.mark.parametrize("vector", ["a_dense", "a_moe", "b_dense", "b_moe"])
def test_official_vectors(vector):
    vec = VECTORS / vector
    if not vec.is_dir():
        pytest.skip(f"compatibility vectors not found at {vec} (set MINIMIND_V_SHARED)")
    from safetensors.torch import load_file

    meta = json.loads((vec / "config.json").read_text())
    cfg = config_from_vector(meta)
    model = MiniMindLM(cfg).eval()
    sd = torch.load(vec / "weights.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(to_our_keys(sd, meta["format"].startswith("A"), cfg.head_dim), strict=True)
    case = load_file(vec / "case.safetensors")
    tol = dict(atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        out = model(case["input_ids.text"])
        torch.testing.assert_close(out.hidden, case["hidden.text"], **tol)
        torch.testing.assert_close(out.logits[:, case["logit_positions.text"]], case["logits.text"], **tol)
        for c in ("img1", "img2"):
            out = model(inputs_embeds=case[f"embeds.{c}"])
            torch.testing.assert_close(out.hidden, case[f"hidden.{c}"], **tol)
            torch.testing.assert_close(out.logits[:, case[f"logit_positions.{c}"]], case[f"logits.{c}"], **tol)
        # greedy decoding with the KV cache: prefill the img1 prompt's embeddings, then feed token ids
        assert torch.equal(case["generate.input_ids"], case["input_ids.img1"])
        new = case["generate.new_ids"]
        cache = model.new_cache(1, case["embeds.img1"].shape[1] + new.shape[1])
        logits = model(inputs_embeds=case["embeds.img1"], cache=cache, logits_to_keep=1).logits
        got = []
        for _ in range(new.shape[1]):
            got.append(logits[:, -1].argmax(-1, keepdim=True))
            logits = model(got[-1], cache=cache).logits
    assert torch.cat(got, 1).tolist() == new.tolist()


def test_training_drops_a_right_padding_mask_and_real_positions_do_not_notice():
    pad = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert attention_plan(4, 0, pad, None, torch.device("cpu"), pad_outputs_unused=True) == (None, True)
    left = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])  # left padding: real tokens would see pads, keep the mask
    assert attention_plan(4, 0, left, None, torch.device("cpu"), pad_outputs_unused=True)[0] is not None
    assert attention_plan(4, 0, pad, None, torch.device("cpu"))[0] is not None  # inference keeps it
    model = tiny()
    ids = torch.randint(0, 97, (2, 6))
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        masked = model(ids, attention_mask=mask).logits
        model.train()
        unmasked = model(ids, attention_mask=mask).logits
        model.eval()
    real = mask.bool()
    torch.testing.assert_close(unmasked[real], masked[real])  # only the pads' own outputs may differ
