"""A model and its run directory: the model's tensors handed to `runs.py`, and a model rebuilt from a run.

The file layout itself (names, atomic writes, the encoder reference) is `minimind_v/runs.py`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .. import allocator, runs
from ..config import VisionConfig
from ..data.tokenizer import load_tokenizer
from .half import STORAGE_DTYPES, Int8Linear, empty_model, quantize_int8, store_encoder_weights, store_weights
from .llm import MiniMindLM
from .lora import load_adapter, merge_lora
from .stream_load import read_header, stream_tensors
from .vision import VisionEncoder
from .vlm import MiniMindVLM


def weights_state_dict(model: MiniMindVLM) -> dict[str, torch.Tensor]:
    """LLM + projector (+ image slots), contiguous, with the tied head dropped (it is the embedding); the
    encoder is saved on its own (runs.write_vlm_run)."""
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("vision.")}
    if model.cfg.llm.tie_embeddings:
        sd.pop("llm.lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_run(model: MiniMindVLM, tokenizer: Any, run_dir: str | Path, extra: dict[str, Any] | None = None, *,
             encoder_in_run: bool = False) -> Path:
    """Write `model` as a VLM run (see runs.write_vlm_run for where its encoder goes)."""
    return runs.write_vlm_run(run_dir, model.cfg, weights_state_dict(model), tokenizer,
                              save_encoder=model.vision.save_pretrained, encoder_in_run=encoder_in_run, extra=extra)


def llm_state_dict(llm: MiniMindLM) -> dict[str, torch.Tensor]:
    sd = {f"llm.{k}": v.detach().contiguous().cpu() for k, v in llm.state_dict().items()}
    if llm.cfg.tie_embeddings:
        sd.pop("llm.lm_head.weight", None)
    return sd


def save_llm_run(llm: MiniMindLM, tokenizer: Any, run_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a language model alone as an LLM run."""
    return runs.write_llm_run(run_dir, llm.cfg, llm_state_dict(llm), tokenizer, extra=extra)


def load_llm_weights(llm: MiniMindLM, weights: dict[str, torch.Tensor], source: str) -> None:
    """Put `llm.*`-stripped weights into `llm`, strictly but for the tied head."""
    missing, unexpected = llm.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and llm.cfg.tie_embeddings)]
    if missing or unexpected:
        raise ValueError(f"the LLM weights of {source} do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if llm.cfg.tie_embeddings:
        llm.lm_head.weight = llm.embed_tokens.weight


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "fp32",
             encoder_weights: str | None = None, adapter: str | Path | None = None) -> tuple[MiniMindVLM, Any]:
    """Rebuild the model and tokenizer from a run directory, in eval mode.

    `weights` "bf16"/"fp16" stores the weights in half precision for inference (half the memory, faster
    decoding; see model/half.py), "int8" the LLM's linear layers as int8 rows with a scale each (a quarter of
    the bytes; embeddings stay float32); `encoder_weights` defaults to the same. The LLM (and a pretrained
    encoder) is then built on the meta device and filled one tensor at a time, so no float32 copy of it is ever
    allocated. `adapter`: a LoRA adapter folder trained on this run
    (model/lora.py), folded into the float32 weights before they are stored as asked.
    """
    if adapter is not None:
        return _load_with_adapter(Path(run_dir), device, weights, encoder_weights or weights, Path(adapter))
    run = Path(run_dir)
    cfg, extra = runs.read_config(run)
    runs.check_vision_hash(cfg, extra)
    encoder_weights = encoder_weights or weights
    if weights not in STORAGE_DTYPES or encoder_weights not in STORAGE_DTYPES:
        raise ValueError(f"weights must be one of {', '.join(STORAGE_DTYPES)}, not {weights!r} / {encoder_weights!r}")
    if weights == encoder_weights == "fp32":
        model = MiniMindVLM(cfg)
        state = load_file(str(run / runs.WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(state, strict=False)
    else:
        if torch.device(device).type == "cpu":  # bounded memory is what these storages are for (allocator.py)
            allocator.fix_mmap_threshold()
        vision = stored_vision(cfg.vision, STORAGE_DTYPES[encoder_weights])
        with empty_model():
            model = MiniMindVLM(cfg, vision=vision)
        if weights != "fp32":
            store_weights(model.llm, STORAGE_DTYPES[weights])
        want = model.state_dict()
        file = run / runs.WEIGHTS_FILE
        state = _read_stored(file, want)
        unexpected = [k for k in read_header(file)[0] if k not in want]
        model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in want if k not in state]
    tied = cfg.llm.tie_embeddings
    missing = [k for k in missing if not k.startswith("vision.")
               and not (tied and k in ("llm.lm_head.weight", "llm.lm_head.scale"))]
    if missing or unexpected:
        raise ValueError(f"{run}/model.safetensors does not fit its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if cfg.llm.tie_embeddings:
        _tie_head(model.llm)
    del state
    allocator.trim()
    return model.to(device).eval(), load_tokenizer(run)


def _read_stored(file: Path, want: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The file's tensors in the dtypes of `want` (a meta state dict), one at a time; an int8 weight is read as
    float32 and quantized at once, its per-row scale filled beside it."""
    state: dict[str, torch.Tensor] = {}

    def target(key: str) -> torch.dtype | None:
        return None if key not in want else torch.float32 if want[key].dtype == torch.int8 else want[key].dtype

    for key, t in stream_tensors(file, target):
        if want[key].dtype == torch.int8:
            state[key], state[key.removesuffix("weight") + "scale"] = quantize_int8(t)
        else:
            state[key] = t
    return state


def _tie_head(llm: MiniMindLM) -> None:
    """The output head shares the embedding; an int8 head gets its own int8 copy of it (embeddings stay float)."""
    if isinstance(llm.lm_head, Int8Linear):
        q, scale = quantize_int8(llm.embed_tokens.weight.detach())
        llm.lm_head.weight = torch.nn.Parameter(q, requires_grad=False)
        llm.lm_head.scale = torch.nn.Parameter(scale, requires_grad=False)
    else:
        llm.lm_head.weight = llm.embed_tokens.weight


def _load_with_adapter(run: Path, device: str | torch.device, weights: str, encoder_weights: str,
                       adapter: Path) -> tuple[MiniMindVLM, Any]:
    model, tok = load_run(run)
    load_adapter(model, adapter)
    merge_lora(model)
    if weights != "fp32":
        store_weights(model.llm, STORAGE_DTYPES[weights])
    if encoder_weights != "fp32":
        store_encoder_weights(model.vision, STORAGE_DTYPES[encoder_weights])
    return model.to(device).eval(), tok


def stored_vision(cfg: VisionConfig, dtype: torch.dtype) -> VisionEncoder:
    """The encoder with its weights stored in `dtype`: a pretrained CLIP/SigLIP through the light tower (no
    transformers import, weights converted as they are read), anything else built as usual, then converted."""
    if cfg.kind in ("clip", "siglip") and cfg.path:
        from ..model.vit_light import load_light_vit

        light = load_light_vit(cfg.path, weight_dtype=dtype)
        if light is not None:
            return VisionEncoder(cfg, tower=light)
    vision = VisionEncoder(cfg)
    store_encoder_weights(vision, dtype)
    return vision
