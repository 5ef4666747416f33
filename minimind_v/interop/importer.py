"""`minimind-v import`: an official MiniMind-V / MiniMind release -> a run directory every command can use.

    run/
      config.json        VLMConfig + "chat_format" and "imported_from" (what was imported, from where)
      model.safetensors  LLM + projector in this package's names (fp32; MiniMind2's q/k rows already reordered)
      tokenizer files    the official tokenizer, with its chat template and special tokens unchanged
      vision/            only with copy_vision; otherwise the encoder folder is referenced by path + hash

The official tokenizer keeps its own chat template, so prompts are built the way the release was trained
(`data/template_prompt.py`), and generation stops on the tokenizer's EOS (`</s>` or `<|im_end|>`).

An LLM alone (`minimind-llm`, e.g. `llm_512.pth`) becomes an LLM run directory, the layout `minimind-v train
llm-pretrain` writes: `{"kind": "llm", "llm": {...}}` in config.json, `llm.*` weights, the tokenizer. VLM training
starts from it with `--from-llm RUN_DIR`, and `export --llm-only` turns it into a Llama / Qwen3 checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import runs
from ..config import LLMConfig, VisionConfig, VLMConfig
from ..data.tokenizer import load_tokenizer
from ..model.checkpoint import save_run
from ..model.vision import VisionEncoder
from ..model.vlm import MiniMindVLM
from ..runs import copy_encoder
from .official import FORMATS, MINIMIND2, MINIMIND3, Converted, convert, load_checkpoint

# What the weights cannot say: each release's encoder family, placeholder and chat format.
RELEASES = {
    MINIMIND2: dict(vision_kind="clip", image_token="@", chat_format="minimind2", eos="</s>"),
    MINIMIND3: dict(vision_kind="siglip", image_token="<|image_pad|>", chat_format="minimind3", eos="<|im_end|>"),
}


def import_official(fmt: str, weights: str | Path, out: str | Path, *, vision: str | Path | None = None,
                    tokenizer: str | Path | None = None, n_heads: int | None = None, top_k: int | None = None,
                    copy_vision: bool = False) -> Path:
    """Convert `weights` (an official .pth) into the run directory `out`; returns its path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if tokenizer is None:
        raise ValueError("--tokenizer is required: the official tokenizer folder (tokenizer.json, "
                         "tokenizer_config.json) that belongs to these weights")
    if fmt != "minimind-llm" and vision is None:
        raise ValueError("--vision is required for a VLM: the local encoder folder (CLIP ViT-B/16 for "
                         "minimind2-v, SigLIP2 P32 for minimind3-v)")
    conv = convert(load_checkpoint(weights), fmt, n_heads=n_heads, top_k=top_k)
    release = RELEASES[conv.layout]
    tok = load_tokenizer(tokenizer)
    check_tokenizer(tok, conv.llm, release["eos"])
    out = Path(out)
    extra = {"chat_format": release["chat_format"],
             "imported_from": {"format": fmt, "weights": str(Path(weights).resolve())}}
    if fmt == "minimind-llm":
        return write_llm_run(conv, tok, out, extra)
    return write_vlm_run(conv, tok, Path(vision), out, extra, release, copy_vision)


def check_tokenizer(tok: Any, cfg: LLMConfig, eos: str) -> None:
    if len(tok) > cfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(tok)} tokens but the weights only {cfg.vocab_size} "
                         "embeddings: is it the tokenizer of these weights?")
    if tok.eos_token != eos:
        raise ValueError(f"the tokenizer's EOS is {tok.eos_token!r}, but these weights were trained with {eos!r}: "
                         "pass the tokenizer folder of the same release")


def image_token_id(tok: Any, image_token: str, tokens_per_image: int) -> int:
    """The placeholder's id, checked: n copies of the placeholder text must be exactly n copies of that id."""
    ids = tok(image_token * tokens_per_image, add_special_tokens=False)["input_ids"]
    if len(set(ids)) != 1 or len(ids) != tokens_per_image:
        raise ValueError(f"{image_token!r} x {tokens_per_image} does not tokenise to {tokens_per_image} copies of "
                         "one id with this tokenizer; is it the release's own tokenizer?")
    return ids[0]


def vision_config(kind: str, path: Path) -> VisionConfig:
    """The encoder settings of a release, sizes read from the encoder folder's own config."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"vision encoder folder {str(path)!r} has no config.json")
    raw = json.loads(cfg_file.read_text())
    model_type = raw.get("model_type", "")
    if not model_type.startswith(kind):
        want = "a CLIP model (openai/clip-vit-base-patch16)" if kind == "clip" else "a SigLIP vision model"
        raise ValueError(f"{str(path)!r} holds a {model_type!r} model; this release needs {want}")
    t = raw.get("vision_config", raw)  # a full CLIPModel folder nests the vision tower's config
    return VisionConfig(kind=kind, path=str(path), image_size=t.get("image_size", 224),
                        patch_size=t.get("patch_size", 16), width=t.get("hidden_size", 768),
                        layers=t.get("num_hidden_layers", 12), heads=t.get("num_attention_heads", 12),
                        drop_cls=kind == "clip", post_layernorm=False, freeze=True)


def write_vlm_run(conv: Converted, tok: Any, vision: Path, out: Path, extra: dict, release: dict,
                  copy_vision: bool) -> Path:
    if copy_vision:
        vision = copy_encoder(vision, out)
    vcfg = vision_config(release["vision_kind"], vision)
    encoder = VisionEncoder(vcfg)
    if encoder.out_dim != conv.projector_in:
        raise ValueError(f"the projector expects {conv.projector_in}-wide features but the encoder in "
                         f"{str(vision)!r} gives {encoder.out_dim}: wrong --vision folder?")
    token = release["image_token"]
    cfg = VLMConfig(llm=conv.llm, vision=vcfg, projector=conv.projector, image_token=token,
                    image_token_id=image_token_id(tok, token, encoder.n_tokens))
    model = MiniMindVLM(cfg, vision=encoder)
    missing, unexpected = model.load_state_dict(conv.state_dict, strict=False)
    missing = [k for k in missing if not k.startswith("vision.") and k != "llm.lm_head.weight"]
    if missing or unexpected:  # convert() checked this already; a mismatch here is a bug, not bad input
        raise RuntimeError(f"internal: converted weights do not load: {missing[:5]} {unexpected[:5]}")
    # A copied encoder is recorded relative to the run, so the run stays relocatable.
    return save_run(model, tok, out, extra=extra, encoder_in_run=copy_vision)


def write_llm_run(conv: Converted, tok: Any, out: Path, extra: dict) -> Path:
    """The LLM run directory of `minimind-v train llm-pretrain`: what `--from-llm` starts a VLM from."""
    return runs.write_llm_run(out, conv.llm, conv.state_dict, tok, extra=extra)
