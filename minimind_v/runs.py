"""The run directory: the one module that reads and writes it. Everything needed to rebuild a model; no pickle.

    run/
      config.json        a VLM run: VLMConfig (+ "vision_hash" when the encoder is referenced, + extras)
                         an LLM run: {"kind": "llm", "llm": LLMConfig, ...extras}
      model.safetensors  "llm.*" (+ "projector.*") weights; the tied head is stored once; never the encoder
      vision/            the encoder when it belongs to the run: trained here, or copied in (relocatable)
      tokenizer.json ... the tokenizer, loadable by transformers' AutoTokenizer

Every file is written to a temporary name in the same folder and then renamed over the old one, so a crash
never leaves half a model, half a config or half a tokenizer behind. A pretrained encoder that stays outside the
run is referenced by absolute path plus a content hash, to notice when the folder changed under the run.

This module knows files, configs and tensors only; building a model from them is `model/checkpoint.py`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from .config import LLMConfig, VLMConfig, build_config

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VISION_DIR = "vision"
LLM_KIND = "llm"  # config.json's "kind" of a language-model run


# ---------------------------------------------------------------------------------------------------------
# Atomic writes


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def write_folder(dest: Path, save: Callable[[Path], None]) -> None:
    """Let `save(folder)` write into a fresh temporary folder inside `dest`, then rename each file into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=dest))
    try:
        save(tmp)
        for f in sorted(tmp.iterdir()):
            os.replace(f, dest / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_tokenizer(tokenizer: Any, run: Path) -> None:
    """The tokenizer's files, with the chat template inside tokenizer_config.json (older transformers read it)."""
    write_folder(run, lambda d: tokenizer.save_pretrained(str(d), save_jinja_files=False))


# ---------------------------------------------------------------------------------------------------------
# Writing a run


def dir_hash(path: Path) -> str:
    """A short content hash of a folder's weight files, to notice when a referenced encoder changed."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))  # the header and first MiB identify a weights file well enough
        h.update(str(f.stat().st_size).encode())
    return h.hexdigest()[:16]


def copy_encoder(src: Path, run: Path) -> Path:
    """Copy what transformers needs to load an encoder (configs and weights) into `run/vision`; returns it.

    A run written afterwards with `encoder_in_run=True` then records the encoder relative to itself, so the
    folder can be moved or shared as one piece.
    """
    dst = Path(run) / VISION_DIR
    dst.mkdir(parents=True, exist_ok=True)
    files = [f for f in Path(src).iterdir() if f.is_file()]
    weights = [f for f in files if f.name.endswith((".safetensors", ".safetensors.index.json"))]
    if not weights:
        weights = [f for f in files if f.name.startswith("pytorch_model") and f.suffix in (".bin", ".json")]
    for f in [f for f in files if f.name in ("config.json", "preprocessor_config.json")] + weights:
        tmp = dst / (f.name + ".tmp")
        shutil.copy2(f, tmp)
        os.replace(tmp, dst / f.name)
    return dst


def write_vlm_run(run_dir: str | Path, cfg: VLMConfig, tensors: dict[str, torch.Tensor], tokenizer: Any, *,
                  save_encoder: Callable[[Path], None] | None = None, encoder_in_run: bool = False,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write a VLM run. The encoder is saved into the run by `save_encoder(folder)` when it was trained here,
    recorded as `vision/` when `encoder_in_run` (copied in by `copy_encoder`), else referenced by path + hash."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    raw = cfg.to_dict()
    if cfg.vision.trained_here:
        if save_encoder is None:
            raise ValueError("an encoder trained here must be saved with the run (save_encoder)")
        write_folder(run / VISION_DIR, save_encoder)
        raw["vision"]["path"] = VISION_DIR
    elif encoder_in_run:
        if not (run / VISION_DIR / "config.json").is_file():
            raise FileNotFoundError(f"{str(run / VISION_DIR)!r} holds no encoder; copy it in with copy_encoder")
        raw["vision"]["path"] = VISION_DIR
    else:
        raw["vision"]["path"] = str(Path(cfg.vision.path).resolve())
        raw["vision_hash"] = dir_hash(Path(cfg.vision.path))
    raw.update(extra or {})
    write_tensors(run / WEIGHTS_FILE, tensors)
    write_text(run / CONFIG_FILE, json.dumps(raw, indent=2))
    write_tokenizer(tokenizer, run)
    return run


def write_llm_run(run_dir: str | Path, cfg: LLMConfig, tensors: dict[str, torch.Tensor], tokenizer: Any, *,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write a language-model run: what `--from-llm` starts a VLM from. `tensors` carry the "llm." prefix."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    write_tensors(run / WEIGHTS_FILE, tensors)
    raw = {"kind": LLM_KIND, "llm": dataclasses.asdict(cfg), **(extra or {})}
    write_text(run / CONFIG_FILE, json.dumps(raw, indent=2))
    write_tokenizer(tokenizer, run)
    return run


# ---------------------------------------------------------------------------------------------------------
# Reading a run


def read_config(run_dir: str | Path) -> tuple[VLMConfig, dict[str, Any]]:
    """The VLMConfig (the encoder path made absolute) and the extras (kind, vision_hash, chat_format, ...)."""
    run = Path(run_dir)
    path = run / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(run)!r} is not a minimind-v run directory (no config.json)")
    raw = json.loads(path.read_text())
    extra = {k: raw.pop(k) for k in list(raw) if k not in VLMConfig.__dataclass_fields__}
    cfg = VLMConfig.from_dict(raw)
    vpath = Path(cfg.vision.path)
    if cfg.vision.path and not vpath.is_absolute():
        cfg.vision.path = str(run / vpath)
    return cfg, extra


def is_llm_run(run_dir: str | Path) -> bool:
    return read_config(run_dir)[1].get("kind") == LLM_KIND


def weights_file(run_dir: str | Path) -> Path:
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} has no {WEIGHTS_FILE}")
    return path


def read_llm(run_dir: str | Path) -> tuple[LLMConfig, dict[str, torch.Tensor]]:
    """The LLM config and its `llm.*` weights (keys without the prefix) from an LLM or a VLM run directory."""
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file() or not (run / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{str(run)!r} is not a run directory (config.json + model.safetensors); train "
                                "one with `minimind-v train llm-pretrain`")
    cfg = build_config(LLMConfig, json.loads((run / CONFIG_FILE).read_text())["llm"])
    sd = load_file(str(run / WEIGHTS_FILE))
    return cfg, {k[4:]: v for k, v in sd.items() if k.startswith("llm.")}


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
