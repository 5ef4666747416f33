"""The run directory: everything needed to rebuild a model, and nothing pickled.

    run/
      config.json        VLMConfig (the vision path is relative to the run when the encoder lives inside it)
      model.safetensors  LLM + projector weights (the tied head is stored once; the encoder is not in here)
      vision/            a from-scratch encoder, saved by transformers (a pretrained one is referenced by path)
      tokenizer.json ... the tokenizer, loadable by transformers' AutoTokenizer
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..config import VisionConfig, VLMConfig
from ..data.tokenizer import load_tokenizer, save_tokenizer
from ..model.half import HALF_DTYPES, STORAGE_DTYPES, empty_model, store_encoder_weights, store_weights
from ..model.stream_load import read_header, stream_tensors
from ..model.vision import VisionEncoder
from ..model.vlm import MiniMindVLM


def weights_state_dict(model: MiniMindVLM) -> dict[str, torch.Tensor]:
    """LLM + projector, contiguous, with the tied head dropped (it is the embedding)."""
    sd = {f"llm.{k}": v for k, v in model.llm.state_dict().items()}
    sd.update({f"projector.{k}": v for k, v in model.projector.state_dict().items()})
    if model.cfg.llm.tie_embeddings:
        sd.pop("llm.lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def dir_hash(path: Path) -> str:
    """A short content hash of a folder's weight files, to notice when a referenced encoder changed."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))  # the header and first MiB identify a weights file well enough
        h.update(str(f.stat().st_size).encode())
    return h.hexdigest()[:16]


def save_run(model: MiniMindVLM, tokenizer: Any, run_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg.to_dict()
    if model.cfg.vision.trained_here:
        model.vision.save_pretrained(run / "vision")
        cfg["vision"]["path"] = "vision"
    else:
        cfg["vision"]["path"] = str(Path(model.cfg.vision.path).resolve())
        cfg["vision_hash"] = dir_hash(Path(model.cfg.vision.path))
    if extra:
        cfg.update(extra)
    tmp = run / "model.safetensors.tmp"
    save_file(weights_state_dict(model), str(tmp), metadata={"format": "pt"})
    tmp.replace(run / "model.safetensors")  # atomic: a crash never leaves half a model
    tmp_cfg = run / "config.json.tmp"
    tmp_cfg.write_text(json.dumps(cfg, indent=2))
    tmp_cfg.replace(run / "config.json")
    save_tokenizer(tokenizer, run)
    return run


def read_config(run_dir: str | Path) -> tuple[VLMConfig, dict[str, Any]]:
    run = Path(run_dir)
    path = run / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(run)!r} is not a minimind-v run directory (no config.json)")
    raw = json.loads(path.read_text())
    extra = {k: raw.pop(k) for k in list(raw) if k not in VLMConfig.__dataclass_fields__}
    cfg = VLMConfig.from_dict(raw)
    vpath = Path(cfg.vision.path)
    if cfg.vision.path and not vpath.is_absolute():
        cfg.vision.path = str(run / vpath)
    return cfg, extra


def check_vision_hash(cfg: VLMConfig, extra: dict[str, Any]) -> bool:
    """Warn when a referenced pretrained encoder is not the one the run was trained with. Returns True if it is."""
    want = extra.get("vision_hash")
    if not want or cfg.vision.trained_here or not Path(cfg.vision.path).is_dir():
        return True
    got = dir_hash(Path(cfg.vision.path))
    if got != want:
        warnings.warn(f"the vision encoder at {cfg.vision.path!r} has hash {got}, but this run was trained with "
                      f"{want}: its answers may be garbage. Point the run at the original encoder folder.",
                      stacklevel=3)
        return False
    return True


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "fp32",
             encoder_weights: str | None = None) -> tuple[MiniMindVLM, Any]:
    """Rebuild the model and tokenizer from a run directory, in eval mode.

    `weights` "bf16"/"fp16" stores the weights in half precision for inference (half the memory, faster
    decoding; see model/half.py); `encoder_weights` (default: the same) may also be "int8" for the vision
    encoder. The LLM (and a pretrained encoder) is then built on the meta device and filled one tensor at a
    time, so no float32 copy of it is ever allocated.
    """
    run = Path(run_dir)
    cfg, extra = read_config(run)
    check_vision_hash(cfg, extra)
    encoder_weights = encoder_weights or weights
    if weights not in ("fp32", *HALF_DTYPES) or encoder_weights not in STORAGE_DTYPES:
        raise ValueError(f"weights must be fp32, bf16 or fp16 (encoder weights also int8), not "
                         f"{weights!r} / {encoder_weights!r}")
    if weights == encoder_weights == "fp32":
        model = MiniMindVLM(cfg)
        state = load_file(str(run / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
    else:
        vision = stored_vision(cfg.vision, STORAGE_DTYPES[encoder_weights])
        with empty_model():
            model = MiniMindVLM(cfg, vision=vision)
        if weights != "fp32":
            store_weights(model.llm, HALF_DTYPES[weights])
        want = model.state_dict()
        file = run / "model.safetensors"
        state = dict(stream_tensors(file, lambda k: want[k].dtype if k in want else None))
        unexpected = [k for k in read_header(file)[0] if k not in want]
        model.load_state_dict(state, strict=False, assign=True)
        missing = [k for k in want if k not in state]
    tied = cfg.llm.tie_embeddings
    missing = [k for k in missing if not k.startswith("vision.") and not (tied and k == "llm.lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{run}/model.safetensors does not fit its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    if cfg.llm.tie_embeddings:
        model.llm.lm_head.weight = model.llm.embed_tokens.weight
    return model.to(device).eval(), load_tokenizer(run)


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
