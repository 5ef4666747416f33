"""`minimind-v export --llm-only`: the language model alone, as a checkpoint transformers loads without remote code.

The MiniMind decoder is a Llama/Qwen-style transformer (pre-norm RMSNorm, GQA, rotate_half RoPE with the same
inv_freq expression, SwiGLU, no biases), so only the key names change:

    ours                 dense, no q/k-norm   dense + q/k-norm   MoE + q/k-norm    MoE, no q/k-norm
                         LlamaForCausalLM     Qwen3ForCausalLM   Qwen3MoeForCausalLM  MixtralForCausalLM

Where it does not fit: an MoE with shared experts (MiniMind2's MoE adds one, unweighted). Qwen2-MoE's shared
expert is scaled by sigmoid(gate(x)), which is never exactly 1, and no other built-in architecture adds one
plainly; those models need the full export with remote code. Mixtral always renormalises the top-k weights, so
an MoE without q/k-norm must have norm_topk_prob on. MoE experts are written in the classic per-expert layout,
which transformers 5 fuses on load.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..config import LLMConfig
from ..data.tokenizer import load_tokenizer, save_tokenizer
from ..model.checkpoint import load_llm_weights
from ..model.llm import MiniMindLM
from ..runs import read_llm


def pick_architecture(cfg: LLMConfig) -> str:
    """The built-in transformers architecture that computes exactly what our decoder computes."""
    if cfg.n_shared_experts:
        raise ValueError("this model's MoE has shared experts, which no built-in transformers architecture adds "
                         "unweighted (Qwen2-MoE gates them with a sigmoid); export the full model instead "
                         "(minimind-v export without --llm-only, loaded with trust_remote_code=True)")
    if cfg.use_moe:
        if cfg.qk_norm:
            return "Qwen3MoeForCausalLM"
        if not cfg.norm_topk_prob:
            raise ValueError("an MoE without q/k-norm maps to Mixtral, which always renormalises the top-k "
                             "router weights; this model has norm_topk_prob off")
        return "MixtralForCausalLM"
    if cfg.qkv_bias:
        if cfg.qk_norm or cfg.use_moe:
            raise ValueError("q/k/v biases together with q/k-norm or experts match no built-in transformers "
                             "architecture; export the full model instead")
        return "Qwen2ForCausalLM"
    return "Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"


def hf_config(cfg: LLMConfig, arch: str, tok) -> dict:
    common = dict(
        architectures=[arch], vocab_size=cfg.vocab_size, hidden_size=cfg.dim, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        hidden_act="silu", max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, attention_dropout=0.0, use_cache=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or 0,
        dtype="float32")
    if arch == "LlamaForCausalLM":
        return dict(model_type="llama", intermediate_size=cfg.ffn_dim, mlp_bias=False, **common)
    if arch in ("Qwen3ForCausalLM", "Qwen2ForCausalLM"):
        return dict(model_type=arch[:5].lower(), intermediate_size=cfg.ffn_dim, use_sliding_window=False, **common)
    moe_ffn = cfg.moe_ffn_dim or cfg.ffn_dim
    if arch == "Qwen3MoeForCausalLM":
        return dict(model_type="qwen3_moe", intermediate_size=moe_ffn, moe_intermediate_size=moe_ffn,
                    num_experts=cfg.n_experts, num_experts_per_tok=cfg.top_k, norm_topk_prob=cfg.norm_topk_prob,
                    decoder_sparse_step=1, mlp_only_layers=[], output_router_logits=False,
                    router_aux_loss_coef=cfg.aux_loss_coef, use_sliding_window=False, **common)
    return dict(model_type="mixtral", intermediate_size=moe_ffn, num_local_experts=cfg.n_experts,
                num_experts_per_tok=cfg.top_k, output_router_logits=False, router_aux_loss_coef=cfg.aux_loss_coef,
                router_jitter_noise=0.0, sliding_window=None, **common)


def hf_state_dict(sd: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Our MiniMindLM keys -> the architecture's (classic, unfused) keys."""
    moe = arch in ("Qwen3MoeForCausalLM", "MixtralForCausalLM")
    mixtral = arch == "MixtralForCausalLM"
    block = "block_sparse_moe" if mixtral else "mlp"
    proj = {"gate": "w1", "up": "w3", "down": "w2"} if mixtral else \
        {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
    out = {}
    for key, value in sd.items():
        if key == "lm_head.weight":
            out[key] = value
            continue
        if not key.startswith("layers."):  # embed_tokens.weight, norm.weight
            out[f"model.{key}"] = value
            continue
        _, i, part, *rest = key.split(".")
        if part == "attn_norm":
            name = "input_layernorm." + rest[0]
        elif part == "ffn_norm":
            name = "post_attention_layernorm." + rest[0]
        elif part == "attn":  # q_proj, k_proj, v_proj, o_proj, q_norm, k_norm: the same names
            name = "self_attn." + ".".join(rest)
        elif moe and rest[0] == "experts":  # ffn.experts.E.{gate,up,down}.weight
            name = f"{block}.experts.{rest[1]}.{proj[rest[2]]}.{rest[3]}"
        elif moe:  # ffn.gate.weight: the router
            name = f"{block}.gate.{rest[1]}"
        else:  # ffn.{gate,up,down}.weight
            name = f"mlp.{proj[rest[0]]}.{rest[1]}"
        out[f"model.layers.{i}.{name}"] = value
    return out


def load_llm(run_dir: str | Path) -> tuple[MiniMindLM, Any]:
    """The LLM of a run directory (an LLM run, or a VLM run whose language model is taken) and its tokenizer."""
    cfg, weights = read_llm(run_dir)
    model = MiniMindLM(cfg)
    load_llm_weights(model, weights, str(run_dir))
    return model.eval(), load_tokenizer(run_dir)


def export_llm_only(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the run's LLM as a plain Llama / Qwen3 / Qwen3-MoE / Mixtral checkpoint with its tokenizer."""
    model, tok = load_llm(run_dir)
    cfg = model.cfg
    arch = pick_architecture(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict()
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight")  # tie_word_embeddings=True: transformers ties it to the embedding
    tensors = {k: v.detach().contiguous() for k, v in hf_state_dict(sd, arch).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(cfg, arch, tok)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    ids = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (out / "generation_config.json").write_text(json.dumps({**ids, "do_sample": False}, indent=2) + "\n")
    save_tokenizer(tok, out)
    return out
