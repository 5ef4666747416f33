"""`minimind-v export --gguf OUT.gguf`: the language model as a GGUF file for llama.cpp (and ollama).

The decoder maps onto llama.cpp's own architectures: `llama` (no q/k-norm, no biases), `qwen2` (q/k/v biases) or
`qwen3` (q/k-norm). llama.cpp's `llama` rotates interleaved pairs of each head's dimensions while this decoder (like
transformers) rotates its two halves, so the q and k rows of each head are reordered for it, as llama.cpp's own
converter does; `qwen2` and `qwen3` rotate halves already. The byte-level BPE tokenizer goes in as `gpt2` tokens
and merges with its chat template. MoE models and the vision side are not written: llama.cpp has no architecture
that adds MiniMind2's shared expert unweighted, and its multimodal projector types are not this projector.
Needs the `gguf` package (`pip install gguf`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import LLMConfig
from .hf_llm import load_llm

OUT_TYPES = ("f32", "f16", "q8_0")


def gguf_architecture(cfg: LLMConfig) -> str:
    if cfg.use_moe:
        raise ValueError("GGUF export covers dense decoders; this model has experts (llama.cpp has no architecture "
                         "that adds MiniMind2's shared expert unweighted)")
    if cfg.qkv_bias and cfg.qk_norm:
        raise ValueError("q/k/v biases together with q/k-norm match no llama.cpp architecture")
    return "qwen2" if cfg.qkv_bias else "qwen3" if cfg.qk_norm else "llama"


def _interleave_heads(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from [first half, second half] to interleaved pairs (llama.cpp's `llama` RoPE)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(sd: dict[str, torch.Tensor], cfg: LLMConfig, arch: str) -> dict[str, np.ndarray]:
    """Our MiniMindLM state dict -> llama.cpp tensor names (float32 arrays)."""
    names = {"attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
             "attn.q_proj.weight": "attn_q.weight", "attn.k_proj.weight": "attn_k.weight",
             "attn.v_proj.weight": "attn_v.weight", "attn.o_proj.weight": "attn_output.weight",
             "attn.q_proj.bias": "attn_q.bias", "attn.k_proj.bias": "attn_k.bias", "attn.v_proj.bias": "attn_v.bias",
             "attn.q_norm.weight": "attn_q_norm.weight", "attn.k_norm.weight": "attn_k_norm.weight",
             "ffn.gate.weight": "ffn_gate.weight", "ffn.up.weight": "ffn_up.weight",
             "ffn.down.weight": "ffn_down.weight"}
    out = {}
    for key, t in sd.items():
        t = t.detach().float()
        if key == "embed_tokens.weight":
            out["token_embd.weight"] = t
        elif key == "norm.weight":
            out["output_norm.weight"] = t
        elif key == "lm_head.weight":
            if not cfg.tie_embeddings:  # a tied head is the embedding: llama.cpp uses token_embd when output is absent
                out["output.weight"] = t
        else:
            _, i, rest = key.split(".", 2)
            if arch == "llama" and rest in ("attn.q_proj.weight", "attn.k_proj.weight"):
                t = _interleave_heads(t, cfg.n_heads if "q_proj" in rest else cfg.n_kv_heads)
            out[f"blk.{i}.{names[rest]}"] = t
    return {k: v.contiguous().numpy() for k, v in out.items()}


def _vocab(tok: Any, size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens (byte-level strings) by id, padded to the embedding's rows, their types, and the BPE merges."""
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    by_id = {i: t for t, i in model["vocab"].items()}
    special = {}
    for t, i in tok.get_added_vocab().items():
        by_id[i], special[i] = t, True
    tokens, types = [], []
    for i in range(size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(3 if i in special else 1)  # CONTROL / NORMAL
        else:
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED: the padding rows of the embedding
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def export_gguf(run_dir: str | Path, out: str | Path, out_type: str = "f16") -> Path:
    """Write the run's LLM (an LLM run, or a VLM run's language model) as a GGUF file."""
    try:
        import gguf
    except ImportError:
        raise ValueError("GGUF export needs the gguf package: pip install gguf") from None
    if out_type not in OUT_TYPES:
        raise ValueError(f"--gguf-type must be one of {', '.join(OUT_TYPES)}, not {out_type!r}")
    model, tok = load_llm(run_dir)
    cfg = model.cfg
    arch = gguf_architecture(cfg)
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(Path(run_dir).name)
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.ffn_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[out_type])
    tokens, types, merges = _vocab(tok, cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for name, add in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id),
                      ("pad_token_id", w.add_pad_token_id)):
        if getattr(tok, name, None) is not None:
            add(getattr(tok, name))
    w.add_add_bos_token(False)
    if getattr(tok, "chat_template", None):
        w.add_chat_template(tok.chat_template)
    for name, arr in gguf_tensors(model.state_dict(), cfg, arch).items():
        if arr.ndim == 1 or out_type == "f32":  # norms and biases stay float32, as llama.cpp's converter keeps them
            w.add_tensor(name, arr.astype(np.float32))
        elif out_type == "f16":
            w.add_tensor(name, arr.astype(np.float16))
        else:
            q = gguf.quants.quantize(arr, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(out)
