"""`minimind-v import --format hf-llm DIR`: a small Hugging Face LLM (a local transformers folder) as the base of a
VLM, the inverse of `export --llm-only` (hf_llm.py).

A Llama-family model (Llama, SmolLM2, TinyLlama), a Qwen2 / Qwen2.5 or a Qwen3 model computes what this
package's decoder computes when its shapes fit: RMSNorm, rotate_half RoPE without scaling, GQA, SwiGLU, and each
head of hidden_size / num_attention_heads dimensions (Qwen2's q/k/v biases and Qwen3's q/k-norm included). Only
the key names change. What does not fit is refused with the reason: a head size other than hidden / heads
(Qwen3-0.6B and larger), RoPE scaling (Llama 3.1+), sliding-window attention, other biases, MoE.

A tokenizer without `<|image_pad|>` gets it as a new special token; the embedding (and an untied head) gets one
row for it, the mean of the existing rows, so the new token starts as an average word rather than noise.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..config import IMAGE_TOKEN, LLMConfig, padded_vocab
from ..data.tokenizer import load_tokenizer
from ..model.checkpoint import save_llm_run
from ..model.llm import MiniMindLM

SUPPORTED = ("llama", "qwen2", "qwen3")


def llm_config_of(hf: dict[str, Any]) -> LLMConfig:
    """Our LLMConfig for a transformers config.json, or a ValueError naming what does not fit."""
    kind = hf.get("model_type")
    if kind not in SUPPORTED:
        raise ValueError(f"model_type {kind!r} is not importable; supported: {', '.join(SUPPORTED)} (Llama, "
                         "SmolLM2, TinyLlama, Qwen2 / Qwen2.5, Qwen3 with head_dim = hidden_size / heads)")
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    problems = []
    if hf.get("head_dim", dim // heads) != dim // heads:
        problems.append(f"head_dim {hf['head_dim']} is not hidden_size / num_attention_heads = {dim // heads}")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("biases in attention or MLP (beyond Qwen2's on q, k and v)")
    if hf.get("use_sliding_window"):
        problems.append("sliding-window attention")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"activation {hf['hidden_act']!r} (SwiGLU needs silu)")
    scaling = hf.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        problems.append(f"RoPE scaling {scaling}")
    if problems:
        raise ValueError(f"this {kind} model does not fit the decoder: {'; '.join(problems)}")
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return LLMConfig(dim=dim, n_layers=hf["num_hidden_layers"], n_heads=heads,
                     n_kv_heads=hf.get("num_key_value_heads") or heads, ffn_dim=hf["intermediate_size"],
                     vocab_size=hf["vocab_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
                     rope_theta=float(theta), norm_eps=hf.get("rms_norm_eps", 1e-6), qk_norm=kind == "qwen3", qkv_bias=kind == "qwen2",
                     tie_embeddings=bool(hf.get("tie_word_embeddings", False)))


def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards an index names."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (src / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{src} has no model.safetensors (or index): save the model with safetensors")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(src / f)))
    return out


def our_state_dict(hf_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' Llama / Qwen3 keys -> MiniMindLM keys (the inverse of hf_llm.hf_state_dict, dense)."""
    names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn": "attn",
             "mlp.gate_proj": "ffn.gate", "mlp.up_proj": "ffn.up", "mlp.down_proj": "ffn.down"}
    out = {}
    for key, value in hf_sd.items():
        k = key.removeprefix("model.")
        if k.startswith("layers."):
            for old, new in names.items():
                k = k.replace(f".{old}.", f".{new}.")
        if "rotary_emb" not in k:
            out[k] = value.float()
    return out


def import_hf_llm(src: str | Path, out: str | Path) -> Path:
    """Write the transformers LLM in `src` as an LLM run directory (with <|image_pad|> added when missing)."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json: point --weights at a transformers model folder")
    cfg = llm_config_of(json.loads((src / "config.json").read_text()))
    tok = load_tokenizer(src)
    sd = our_state_dict(read_hf_weights(src))
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    if IMAGE_TOKEN not in tok.get_added_vocab():
        tok.add_tokens([IMAGE_TOKEN], special_tokens=True)
        new = tok.convert_tokens_to_ids(IMAGE_TOKEN)
        rows = padded_vocab(new + 1) - cfg.vocab_size if new >= cfg.vocab_size else 0
        for k in ("embed_tokens.weight", "lm_head.weight"):
            if k in sd:  # the new token's row (appended, or an unused padding row): the mean of the trained rows
                mean = sd[k].mean(0, keepdim=True)
                sd[k] = torch.cat([sd[k], mean.expand(rows, -1)]) if rows else sd[k].clone()
                sd[k][new] = mean[0]
        cfg = dataclasses.replace(cfg, vocab_size=cfg.vocab_size + rows)
    model = MiniMindLM(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{src}: weights do not fit the config: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return save_llm_run(model, tok, out, extra={"imported_from": {"format": "hf-llm", "path": str(src.resolve())}})
