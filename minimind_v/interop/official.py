"""The official MiniMind-V / MiniMind checkpoints, renamed into this package's state-dict layout.

Two key layouts exist, named by release (see `compat/README.md` of the test vectors for the tensor-level details):
  - MINIMIND2, MiniMind2-V / MiniMind2 (Feb 2025): `tok_embeddings`, `layers.N.attention.wq`, `feed_forward.w1/w2/w3`,
    `vision_proj.vision_proj.0`; RoPE on interleaved pairs (x[2i], x[2i+1]); eps 1e-5; MoE top-2 + 1 shared expert.
  - MINIMIND3, minimind-3v / minimind-3 (2026): Qwen3 names (`model.layers.N.self_attn.q_proj`, `q_norm`, ...,
    `vision_proj.mlp.*`); rotate_half RoPE; eps 1e-6; MoE top-1, no shared expert; saved in float16.

Our decoder rotates the pairs (x[i], x[i + d/2]) (rotate_half). MiniMind2's interleaved pairs become those pairs when the
output rows of wq and wk are reordered inside each head to [0, 2, 4, ..., 1, 3, 5, ...]: q.k is a sum over rows,
so the same reordering of q and k leaves every attention score unchanged, and each rotated pair lands where
rotate_half expects it.

The model's sizes come from the tensor shapes, never from constants. The one thing shapes cannot tell is MiniMind2's
number of attention heads (dim = heads * head_dim, and any split fits); it defaults to the official 8.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..config import LLMConfig

FORMATS = ("minimind2-v", "minimind3-v", "minimind-llm")
MINIMIND2, MINIMIND3 = "minimind2", "minimind3"  # the two key layouts, by release
OFFICIAL_HEADS = 8  # every published MiniMind2 / minimind-3 model has 8 query heads

_L = r"layers\.(\d+)\."
# (official key regex, our key template): `\1`, `\2` are the regex groups. Matched against the whole key.
MINIMIND2_RULES = [
    (r"tok_embeddings\.weight", "llm.embed_tokens.weight"),
    (r"output\.weight", "llm.lm_head.weight"),
    (r"norm\.weight", "llm.norm.weight"),
    (_L + r"attention\.w([qkvo])\.weight", r"llm.layers.\1.attn.\2_proj.weight"),
    (_L + r"attention_norm\.weight", r"llm.layers.\1.attn_norm.weight"),
    (_L + r"ffn_norm\.weight", r"llm.layers.\1.ffn_norm.weight"),
    (_L + r"feed_forward\.w1\.weight", r"llm.layers.\1.ffn.gate.weight"),
    (_L + r"feed_forward\.w3\.weight", r"llm.layers.\1.ffn.up.weight"),
    (_L + r"feed_forward\.w2\.weight", r"llm.layers.\1.ffn.down.weight"),
    (_L + r"feed_forward\.gate\.weight", r"llm.layers.\1.ffn.gate.weight"),  # the MoE router
    (_L + r"feed_forward\.experts\.(\d+)\.w1\.weight", r"llm.layers.\1.ffn.experts.\2.gate.weight"),
    (_L + r"feed_forward\.experts\.(\d+)\.w3\.weight", r"llm.layers.\1.ffn.experts.\2.up.weight"),
    (_L + r"feed_forward\.experts\.(\d+)\.w2\.weight", r"llm.layers.\1.ffn.experts.\2.down.weight"),
    (_L + r"feed_forward\.shared_experts\.w1\.weight", r"llm.layers.\1.ffn.shared_experts.0.gate.weight"),
    (_L + r"feed_forward\.shared_experts\.w3\.weight", r"llm.layers.\1.ffn.shared_experts.0.up.weight"),
    (_L + r"feed_forward\.shared_experts\.w2\.weight", r"llm.layers.\1.ffn.shared_experts.0.down.weight"),
    (r"vision_proj\.vision_proj\.0\.(weight|bias)", r"projector.linear.\1"),
]
_ML = r"model\.layers\.(\d+)\."
MINIMIND3_RULES = [
    (r"model\.embed_tokens\.weight", "llm.embed_tokens.weight"),
    (r"lm_head\.weight", "llm.lm_head.weight"),
    (r"model\.norm\.weight", "llm.norm.weight"),
    (_ML + r"self_attn\.([qkvo])_proj\.weight", r"llm.layers.\1.attn.\2_proj.weight"),
    (_ML + r"self_attn\.([qk])_norm\.weight", r"llm.layers.\1.attn.\2_norm.weight"),
    (_ML + r"input_layernorm\.weight", r"llm.layers.\1.attn_norm.weight"),
    (_ML + r"post_attention_layernorm\.weight", r"llm.layers.\1.ffn_norm.weight"),
    (_ML + r"mlp\.(gate|up|down)_proj\.weight", r"llm.layers.\1.ffn.\2.weight"),
    (_ML + r"mlp\.gate\.weight", r"llm.layers.\1.ffn.gate.weight"),  # the MoE router
    (_ML + r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight", r"llm.layers.\1.ffn.experts.\2.\3.weight"),
    (r"vision_proj\.mlp\.([013])\.(weight|bias)", r"projector.mlp.\1.\2"),
]
# Per-layout facts that are not in the tensors.
LAYOUT_DEFAULTS = {
    MINIMIND2: dict(norm_eps=1e-5, top_k=2, aux_loss_coef=0.1),
    MINIMIND3: dict(norm_eps=1e-6, top_k=1, aux_loss_coef=5e-4),
}
# Derived buffers some versions saved; they are recomputed, never loaded.
_DERIVED = re.compile(r"(^|\.)(pos_cis|freqs_cis|freqs_cos|freqs_sin|inv_freq)$")


@dataclass
class Converted:
    """Official weights in our layout: `state_dict` keys are `llm.*` and (for a VLM) `projector.*`."""

    layout: str  # MINIMIND2 or MINIMIND3
    llm: LLMConfig
    projector: str | None  # "linear" | "mlp" | None (LLM-only weights)
    projector_in: int | None  # the vision feature width the projector expects
    state_dict: dict[str, Tensor]


def load_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """Read a .pth state dict safely (no pickled code runs) and strip DDP / torch.compile prefixes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, a truncated download, not a torch file at all
        raise ValueError(f"could not read {str(path)!r} as a plain state dict (weights_only=True): "
                         f"{type(e).__name__}: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # a training checkpoint that wraps the weights
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict (a mapping of names to tensors)")
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in obj.items()}


def detect_layout(keys) -> str:
    keys = list(keys)
    if any(k.startswith("tok_embeddings.") or ".attention.wq." in k for k in keys):
        return MINIMIND2
    if any(k.startswith("model.embed_tokens.") or ".self_attn.q_proj." in k for k in keys):
        return MINIMIND3
    raise ValueError("these weights are neither MiniMind2 (tok_embeddings, layers.N.attention.wq, ...) nor "
                     f"minimind-3 (model.embed_tokens, model.layers.N.self_attn.q_proj, ...); first keys: {keys[:4]}")


def layout_of_format(fmt: str, keys) -> str:
    """Check that the weights match the format the user named; return MINIMIND2 or MINIMIND3."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    layout = detect_layout(keys)
    want = {"minimind2-v": MINIMIND2, "minimind3-v": MINIMIND3}.get(fmt, layout)
    if layout != want:
        named = {MINIMIND2: "minimind2-v", MINIMIND3: "minimind3-v"}[layout]
        raise ValueError(f"--format {fmt} expects {'MiniMind2-V' if want == MINIMIND2 else 'minimind-3v'} key names, but "
                         f"these weights use the other layout: try --format {named}")
    has_proj = any(k.startswith("vision_proj.") for k in keys)
    if fmt == "minimind-llm" and has_proj:
        raise ValueError("these weights contain a vision projector: import them as a VLM "
                         f"(--format {'minimind2-v' if layout == MINIMIND2 else 'minimind3-v'})")
    if fmt != "minimind-llm" and not has_proj:
        raise ValueError("these weights have no vision_proj.* keys: they are an LLM alone; "
                         "import them with --format minimind-llm")
    return layout


def rename(sd: dict[str, Tensor], layout: str) -> dict[str, Tensor]:
    """Official names -> ours. Every key must match a rule: a leftover key means a layout we do not know."""
    rules = [(re.compile(pat), repl) for pat, repl in (MINIMIND2_RULES if layout == MINIMIND2 else MINIMIND3_RULES)]
    out, unknown = {}, []
    for key, value in sd.items():
        if key.startswith("vision_encoder.") or _DERIVED.search(key):
            continue  # the encoder comes from its own folder; RoPE tables are recomputed
        for pat, repl in rules:
            if pat.fullmatch(key):
                out[pat.sub(repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} keys match no known {layout} layout name: {unknown[:6]}")
    return out


def interleaved_to_half(w: Tensor, head_dim: int) -> Tensor:
    """Reorder the output rows of a q/k projection inside each head: pairs (2i, 2i+1) -> (i, i + d/2)."""
    perm = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return w.reshape(-1, head_dim, w.shape[-1])[:, perm].reshape(w.shape)


def infer_llm_config(sd: dict[str, Tensor], layout: str, n_heads: int | None = None,
                     top_k: int | None = None) -> LLMConfig:
    """The decoder's sizes from the shapes of renamed weights (plus the layout's fixed facts)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise ValueError(f"the weights have no tensor for {key!r}; the checkpoint is incomplete")
        return tuple(sd[key].shape)

    vocab, dim = shape("llm.embed_tokens.weight")
    layer_ids = sorted({int(m.group(1)) for k in sd if (m := re.match(r"llm\.layers\.(\d+)\.", k))})
    if not layer_ids or layer_ids != list(range(len(layer_ids))):
        raise ValueError(f"the decoder layers are not numbered 0..N-1: found {layer_ids[:10]}")
    q_rows = shape("llm.layers.0.attn.q_proj.weight")[0]
    if q_rows != dim:
        raise ValueError(f"q_proj has {q_rows} output rows but the hidden size is {dim}; "
                         "heads * head_dim != hidden size is not supported")
    qk_norm = "llm.layers.0.attn.q_norm.weight" in sd
    if qk_norm:  # minimind-3 stores head_dim in the q/k-norm weights, which settles the head count
        head_dim = shape("llm.layers.0.attn.q_norm.weight")[0]
        derived = dim // head_dim
        if n_heads is not None and n_heads != derived:
            raise ValueError(f"--n-heads {n_heads} contradicts the weights: q_norm has head_dim {head_dim}, "
                             f"so there are {derived} heads")
        n_heads = derived
    n_heads = n_heads or OFFICIAL_HEADS
    if dim % n_heads:
        raise ValueError(f"hidden size {dim} is not divisible by {n_heads} heads; pass the right --n-heads")
    head_dim = dim // n_heads
    kv_rows = shape("llm.layers.0.attn.k_proj.weight")[0]
    if kv_rows % head_dim or n_heads % (kv_rows // head_dim):
        raise ValueError(f"k_proj has {kv_rows} rows, which is no whole number of kv heads of size {head_dim} "
                         f"that divides {n_heads} heads; pass the right --n-heads")

    n_experts = len({k for k in sd if re.match(r"llm\.layers\.0\.ffn\.experts\.\d+\.gate\.weight$", k)})
    n_shared = len({k for k in sd if re.match(r"llm\.layers\.0\.ffn\.shared_experts\.\d+\.gate\.weight$", k)})
    ffn_key = "llm.layers.0.ffn.experts.0.gate.weight" if n_experts else "llm.layers.0.ffn.gate.weight"
    ffn_dim = shape(ffn_key)[0]
    facts = LAYOUT_DEFAULTS[layout]
    top_k = top_k or facts["top_k"]
    if n_experts and not 1 <= top_k <= n_experts:
        raise ValueError(f"--top-k {top_k} must be between 1 and the {n_experts} experts")
    return LLMConfig(
        dim=dim, n_layers=len(layer_ids), n_heads=n_heads, n_kv_heads=kv_rows // head_dim, ffn_dim=ffn_dim,
        vocab_size=vocab, max_seq_len=32768, rope_theta=1e6, norm_eps=facts["norm_eps"], qk_norm=qk_norm,
        tie_embeddings="llm.lm_head.weight" not in sd, n_experts=n_experts, top_k=top_k if n_experts else 2,
        n_shared_experts=n_shared, moe_ffn_dim=ffn_dim if n_experts else 0, norm_topk_prob=True,
        aux_loss_coef=facts["aux_loss_coef"])


def convert(sd: dict[str, Tensor], fmt: str, n_heads: int | None = None, top_k: int | None = None) -> Converted:
    """An official state dict (as loaded) -> our layout, config and projector kind. Works on meta tensors too."""
    layout = layout_of_format(fmt, sd.keys())
    ours = rename(sd, layout)
    # A float16 release (minimind-3) is computed in fp32 here like every other checkpoint.
    ours = {k: v.float() if v.is_floating_point() else v for k, v in ours.items()}
    head = ours.get("llm.lm_head.weight")
    if head is not None and _same(head, ours.get("llm.embed_tokens.weight")):
        del ours["llm.lm_head.weight"]  # both releases save the tied head twice; we store it once
    cfg = infer_llm_config(ours, layout, n_heads, top_k)
    if layout == MINIMIND2:
        for i in range(cfg.n_layers):
            for p in ("q", "k"):
                key = f"llm.layers.{i}.attn.{p}_proj.weight"
                ours[key] = interleaved_to_half(ours[key], cfg.head_dim)
    projector = projector_in = None
    if "projector.linear.weight" in ours:
        projector, projector_in = "linear", ours["projector.linear.weight"].shape[1]
    elif "projector.mlp.1.weight" in ours:
        projector, projector_in = "mlp", ours["projector.mlp.1.weight"].shape[1]
    expected = expected_shapes(cfg, projector, projector_in)
    check_keys(ours, expected)
    return Converted(layout, cfg, projector, projector_in, ours)


def _same(a: Tensor, b: Tensor | None) -> bool:
    if b is None or a.shape != b.shape:
        return False
    if a.is_meta or b.is_meta:
        return True  # a shape-only manifest: the releases always tie the head
    return bool(torch.equal(a, b))


def expected_shapes(cfg: LLMConfig, projector: str | None, projector_in: int | None) -> dict[str, tuple]:
    """Every parameter our model has for this config, with its shape (built on the meta device: no memory)."""
    from ..model.llm import MiniMindLM
    from ..model.projector import Projector

    with torch.device("meta"):
        llm = MiniMindLM(cfg)
        proj = Projector(projector, projector_in, cfg.dim) if projector else None
    shapes = {f"llm.{k}": tuple(v.shape) for k, v in llm.state_dict().items()}
    if cfg.tie_embeddings:
        shapes.pop("llm.lm_head.weight")
    if proj is not None:
        shapes.update({f"projector.{k}": tuple(v.shape) for k, v in proj.state_dict().items()})
    return shapes


def check_keys(sd: dict[str, Tensor], expected: dict[str, tuple]) -> None:
    """No key left over on either side, and every shape as the config says."""
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    wrong = [f"{k}: {tuple(sd[k].shape)} != {expected[k]}" for k in expected
             if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or extra or wrong:
        raise ValueError("the converted weights do not fit the inferred model: "
                         f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shapes {wrong[:5]}")
