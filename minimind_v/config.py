"""Every knob of the model lives here, as dataclasses with named presets.

A run directory stores these as JSON (`config.json`), so a model can always be rebuilt from its folder.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, asdict
from typing import Any

IMAGE_TOKEN = "<|image_pad|>"  # the placeholder token, repeated once per image feature in the ids
IMAGE_MARKER = "<image>"  # what a prompt holds where an image goes, one per image


@dataclass
class LLMConfig:
    """The MiniMind decoder. Defaults are the MiniMind2-Small sizes."""

    dim: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 2
    ffn_dim: int = 1408  # SwiGLU hidden size
    vocab_size: int = 6400
    max_seq_len: int = 2048
    rope_theta: float = 1e6
    norm_eps: float = 1e-5
    qk_norm: bool = False  # RMSNorm over each head's q and k before RoPE (minimind-3v)
    qkv_bias: bool = False  # biases on the q, k and v projections (Qwen2 / Qwen2.5 backbones)
    tie_embeddings: bool = True
    dropout: float = 0.0
    # Mixture of experts: n_experts == 0 means a dense SwiGLU feed-forward.
    n_experts: int = 0
    top_k: int = 2
    n_shared_experts: int = 0
    moe_ffn_dim: int = 0  # 0 -> same as ffn_dim
    norm_topk_prob: bool = True  # renormalise the top-k router weights to sum to 1
    aux_loss_coef: float = 0.1

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def use_moe(self) -> bool:
        return self.n_experts > 0

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if self.n_experts and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k {self.top_k} must be in 1..n_experts ({self.n_experts})")


VOCAB_MULTIPLE = 64  # embedding rows are rounded up to a multiple of this: it keeps the head's matmul aligned


def padded_vocab(n_tokens: int) -> int:
    """The embedding size for a tokenizer of `n_tokens` tokens (rounded up to VOCAB_MULTIPLE)."""
    return VOCAB_MULTIPLE * math.ceil(n_tokens / VOCAB_MULTIPLE)


def minimind2_ffn(dim: int) -> int:
    """MiniMind2's FFN rule: 8/3 * dim rounded up to a multiple of 64 (1408 at 512, 2048 at 768)."""
    return 64 * math.ceil(int(2 * 4 * dim / 3) / 64)


def minimind3_ffn(dim: int) -> int:
    """minimind-3's FFN rule: pi * dim rounded up to a multiple of 64 (2432 at 768)."""
    return math.ceil(dim * math.pi / 64) * 64


LLM_PRESETS: dict[str, LLMConfig] = {
    # The official sizes (parameter counts are checked by the tests).
    "minimind2-small": LLMConfig(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, ffn_dim=1408),
    "minimind2": LLMConfig(dim=768, n_layers=16, n_heads=8, n_kv_heads=2, ffn_dim=2048),
    "minimind2-small-moe": LLMConfig(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, ffn_dim=1408,
                                     n_experts=4, top_k=2, n_shared_experts=1, aux_loss_coef=0.1),
    "minimind2-moe": LLMConfig(dim=768, n_layers=16, n_heads=8, n_kv_heads=2, ffn_dim=2048,
                               n_experts=4, top_k=2, n_shared_experts=1, aux_loss_coef=0.1),
    "minimind3": LLMConfig(dim=768, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=2432, qk_norm=True,
                           norm_eps=1e-6, max_seq_len=32768),
    "minimind3-moe": LLMConfig(dim=768, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=2432, qk_norm=True,
                               norm_eps=1e-6, max_seq_len=32768, n_experts=4, top_k=1,
                               moe_ffn_dim=2432, aux_loss_coef=5e-4),
    # The reference's current dim-512 model (used by the speed benchmark): 30.0M parameters.
    "minimind3-small": LLMConfig(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dim=1664, qk_norm=True,
                                 norm_eps=1e-6),
    # Small models for the embedded shapes world (a 2-core CPU trains these in minutes).
    "shapes-tiny": LLMConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192, vocab_size=512,
                             max_seq_len=256),
    "shapes": LLMConfig(dim=192, n_layers=4, n_heads=6, n_kv_heads=3, ffn_dim=512, vocab_size=1024,
                        max_seq_len=512, qk_norm=True, norm_eps=1e-6),
}


@dataclass
class VisionConfig:
    """Which encoder turns pixels into patch features, and how they are reduced before the projector.

    kind="scratch": a small CLIP-style vision transformer built from `width/layers/heads/patch/image_size` and
    trained here. kind="cnn": a small ResNet (`width` = last stage's channels, `layers` = blocks per stage,
    16x downsampling) with coordinate channels, trained here (the embedded default). kind="clip"/"siglip":
    a pretrained transformers encoder loaded from the local directory `path` and kept frozen.
    """

    kind: str = "scratch"  # scratch | cnn | clip | siglip
    path: str = ""  # local directory for clip / siglip
    image_size: int = 96
    patch_size: int = 16
    width: int = 192
    layers: int = 4
    heads: int = 4
    merge: int = 1  # k x k pixel-shuffle merge of patch tokens (1 = off)
    drop_cls: bool = True  # CLIP: drop the CLS token (MiniMind2-V)
    post_layernorm: bool = False  # apply the encoder's post-layernorm to every token (SigLIP / minimind-3v)
    freeze: bool = True

    @property
    def trained_here(self) -> bool:
        """A from-scratch encoder: its weights belong to the run (a pretrained one is referenced by path)."""
        return self.kind in ("scratch", "cnn")


ATTENTION_KINDS = ("causal", "turn")


@dataclass
class VLMConfig:
    llm: LLMConfig = field(default_factory=LLMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: str = "mlp"  # linear (MiniMind2-V) | mlp (LayerNorm + 2-layer MLP, LLaVA-1.5 / minimind-3v)
    image_token: str = IMAGE_TOKEN  # the placeholder repeated once per image feature
    image_token_id: int = 3  # its id in the tokenizer (ours: 3; MiniMind2-V: 34 for '@'; minimind-3v: 12)
    image_marker: str = IMAGE_MARKER  # what users write in a prompt, one per image
    # Who sees whom. "causal": every token sees only earlier ones (MiniMind-V). "turn": the tokens of a user turn
    # that holds images also see each other, so an image's tokens can read the question written after them (a
    # prefix-LM, as PaliGemma does); the answers stay causal. The model finds turns by turn_start_id.
    attention: str = "causal"
    turn_start_id: int = -1  # the token that opens every chat turn (<|im_start|>); "turn" attention needs it
    # Learned embeddings added to the tokens of a sample's 1st, 2nd, ... image (the last one also serves every
    # later image). Without them an image token says what is there, not which image it belongs to, so an answer
    # that found the object still cannot say "the second image". 0: none, as in MiniMind-V.
    image_slots: int = 0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.image_slots < 0:
            raise ValueError(f"image_slots must be >= 0, got {self.image_slots}")
        if self.attention == "turn" and self.turn_start_id < 0:
            raise ValueError('attention="turn" needs turn_start_id, the id of the token that opens a chat turn')

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VLMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(d) - known
        if extra:
            raise ValueError(f"unknown VLM config keys: {sorted(extra)}")
        return cls(
            llm=build_config(LLMConfig, d.get("llm", {})),
            vision=build_config(VisionConfig, d.get("vision", {})),
            **{k: v for k, v in d.items() if k not in ("llm", "vision")},
        )


def build_config(cls: type, d: dict[str, Any]) -> Any:
    """A config dataclass from a dict, refusing keys it does not know (a typo must not pass silently)."""
    known = {f.name for f in dataclasses.fields(cls)}
    extra = set(d) - known
    if extra:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(extra)}")
    return cls(**d)


def options_from(cls: type, namespace: Any) -> Any:
    """An options dataclass from a command line's parsed arguments (the fields it has; the rest default)."""
    return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if hasattr(namespace, f.name)})


def llm_preset(name: str, **overrides: Any) -> LLMConfig:
    if name not in LLM_PRESETS:
        raise ValueError(f"unknown LLM preset {name!r}; choose one of: {', '.join(LLM_PRESETS)}")
    return dataclasses.replace(LLM_PRESETS[name], **overrides)
