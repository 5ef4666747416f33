"""Mixture-of-experts feed-forward: routing, dispatch, shared experts and the load-balancing loss."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minimind_v.config import LLMConfig
from minimind_v.model.llm import MiniMindLM
from minimind_v.model.moe import MoE


def moe(**overrides) -> MoE:
    torch.manual_seed(0)
    cfg = dict(dim=16, n_heads=2, n_kv_heads=1, ffn_dim=24, n_experts=4, top_k=2, n_shared_experts=1,
               aux_loss_coef=0.1)
    return MoE(LLMConfig(**{**cfg, **overrides}))


def naive_moe(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """One token at a time: softmax, top-k, renormalise, weighted sum of experts, plus the shared experts."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    for t, tok in enumerate(flat):
        p = F.softmax(m.gate.weight @ tok, dim=-1)
        top = sorted(range(m.n_experts), key=lambda e: -p[e].item())[: m.top_k]
        w = p[top] / (p[top].sum() + 1e-20) if m.norm_topk_prob else p[top]
        for wk, e in zip(w, top):
            out[t] += wk * m.experts[e](tok)
        for s in m.shared_experts:
            out[t] += s(tok)
    return out.reshape(x.shape)


@pytest.mark.parametrize("top_k,shared,norm", [(2, 1, True), (1, 0, True), (2, 0, False), (3, 2, True)])
@pytest.mark.parametrize("training", [False, True])
def test_dispatch_matches_a_per_token_loop(top_k, shared, norm, training):
    m = moe(top_k=top_k, n_shared_experts=shared, norm_topk_prob=norm).train(training)
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        y, _ = m(x)
        torch.testing.assert_close(y, naive_moe(m, x), atol=1e-6, rtol=1e-5)


def test_router_picks_the_top_k_and_renormalises():
    m = moe()
    x = torch.randn(50, 16)
    probs, weights, experts = m.route(x)
    torch.testing.assert_close(probs, F.softmax(x @ m.gate.weight.T, -1))
    assert torch.equal(experts.sort(-1).values, probs.argsort(-1, descending=True)[:, :2].sort(-1).values)
    torch.testing.assert_close(weights.sum(-1), torch.ones(50))
    # top-1 with renormalisation: the weight is exactly 1, the router probability does not scale the output
    _, w1, _ = moe(top_k=1).route(x)
    assert torch.equal(w1, torch.ones(50, 1))
    # without renormalisation the weights are the raw probabilities
    m.norm_topk_prob = False
    _, raw, idx = m.route(x)
    torch.testing.assert_close(raw, probs.gather(-1, idx))


def test_shared_expert_is_added_unweighted():
    m = moe().eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        for e in m.experts:
            e.down.weight.zero_()
        y, _ = m(x)
        torch.testing.assert_close(y, m.shared_experts[0](x))


def test_aux_loss_equals_the_switch_formula_and_trains_the_router():
    m = moe(top_k=2).train()
    x = torch.randn(4, 9, 16)
    _, aux = m(x)
    probs, _, experts = m.route(x.reshape(-1, 16))
    f = torch.stack([(experts == e).float().sum() for e in range(4)]) / experts.numel()
    expected = 0.1 * 4 * (f * probs.mean(0)).sum()
    assert aux.item() > 0
    torch.testing.assert_close(aux, expected)
    aux.backward()
    assert m.gate.weight.grad.abs().sum() > 0
    # uniform router probabilities give exactly the coefficient, whatever the assignment
    with torch.no_grad():
        m.gate.weight.zero_()
    torch.testing.assert_close(m(x)[1], torch.tensor(0.1))
    # no auxiliary loss at inference
    assert m.eval()(x)[1].item() == 0.0


def test_main_loss_reaches_the_router_and_idle_experts_get_zero_grads():
    m = moe(top_k=2).train()
    x = torch.randn(6, 16)
    with torch.no_grad():  # send every token to experts 0 and 1
        m.gate.weight.zero_()
        m.gate.weight[0].fill_(0.5)
        m.gate.weight[1].fill_(0.4)
    x = x.abs()
    y, _ = m(x)
    y.pow(2).sum().backward()
    assert m.gate.weight.grad.abs().sum() > 0
    assert m.experts[0].up.weight.grad.abs().sum() > 0
    assert m.experts[3].up.weight.grad is not None and m.experts[3].up.weight.grad.abs().sum() == 0


def test_moe_model_sums_aux_over_layers_and_decodes_with_a_cache():
    torch.manual_seed(0)
    cfg = LLMConfig(dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=48, vocab_size=61, n_experts=4,
                    top_k=2, n_shared_experts=1)
    model = MiniMindLM(cfg).train()
    ids = torch.randint(0, 61, (2, 10))
    per_layer = []
    hooks = [layer.ffn.register_forward_hook(lambda mod, inp, out: per_layer.append(out[1])) for layer in model.layers]
    out = model(ids)
    for h in hooks:
        h.remove()
    assert len(per_layer) == 3 and all(a.item() > 0 for a in per_layer)
    torch.testing.assert_close(out.aux_loss, torch.stack(per_layer).sum())
    dense = MiniMindLM(LLMConfig(dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=24, vocab_size=11)).train()
    assert dense(torch.ones(1, 3, dtype=torch.long)).aux_loss.item() == 0.0

    model.eval()
    mask = torch.tensor([[1] * 10, [0] * 4 + [1] * 6])
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        cache = model.new_cache(2, 10)
        prefill = model(ids[:, :6], attention_mask=mask[:, :6], cache=cache).logits
        steps = [model(ids[:, t:t + 1], attention_mask=mask[:, : t + 1], cache=cache).logits for t in range(6, 10)]
    real = mask.bool()
    torch.testing.assert_close(torch.cat([prefill] + steps, 1)[real], full[real], atol=1e-5, rtol=1e-5)

