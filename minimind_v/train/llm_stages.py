"""The language model on its own: what the VLM stages start from, trained with the same loop and tools.

An LLM run directory looks like a VLM one without the vision parts:

    run/ config.json {"kind": "llm", "llm": {...}}   model.safetensors ("llm.*" keys)   tokenizer files

`--from-llm` accepts it (or a VLM run, whose LLM is taken), so nobody is stuck without base weights.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from ..config import LLMConfig, _build
from ..data.tokenizer import load_tokenizer, save_tokenizer
from ..model.llm import LMOutput, MiniMindLM


class LMOnly(nn.Module):
    """A MiniMindLM behind the VLM's call signature, so the trainer drives both the same way."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.llm = MiniMindLM(cfg)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **kw: Any) -> LMOutput:
        if pixel_values is not None and len(pixel_values):
            raise ValueError("a language-model stage got images; use `train pretrain` / `train sft` for a VLM")
        return self.llm(input_ids, **kw)


def llm_state_dict(llm: MiniMindLM) -> dict[str, torch.Tensor]:
    sd = {f"llm.{k}": v.detach().contiguous().cpu() for k, v in llm.state_dict().items()}
    if llm.cfg.tie_embeddings:
        sd.pop("llm.lm_head.weight", None)
    return sd


def save_llm_run(model: LMOnly, tokenizer: Any, run_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / "model.safetensors.tmp"
    save_file(llm_state_dict(model.llm), str(tmp), metadata={"format": "pt"})
    tmp.replace(run / "model.safetensors")
    cfg = {"kind": "llm", "llm": dataclasses.asdict(model.llm.cfg), **(extra or {})}
    tmp_cfg = run / "config.json.tmp"
    tmp_cfg.write_text(json.dumps(cfg, indent=2))
    tmp_cfg.replace(run / "config.json")
    save_tokenizer(tokenizer, run)
    return run


def read_llm(run_dir: str | Path) -> tuple[LLMConfig, dict[str, torch.Tensor]]:
    """The LLM config and its `llm.*` weights (keys without the prefix) from an LLM or a VLM run directory."""
    run = Path(run_dir)
    if not (run / "config.json").is_file() or not (run / "model.safetensors").is_file():
        raise FileNotFoundError(f"{str(run)!r} is not a run directory (config.json + model.safetensors); train "
                                "one with `minimind-v train llm-pretrain`")
    cfg = _build(LLMConfig, json.loads((run / "config.json").read_text())["llm"])
    sd = load_file(str(run / "model.safetensors"))
    return cfg, {k[4:]: v for k, v in sd.items() if k.startswith("llm.")}


def load_llm_into(llm: MiniMindLM, weights: dict[str, torch.Tensor], source: str) -> None:
    missing, unexpected = llm.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and llm.cfg.tie_embeddings)]
    if missing or unexpected:
        raise ValueError(f"the LLM weights of {source} do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if llm.cfg.tie_embeddings:
        llm.lm_head.weight = llm.embed_tokens.weight


def load_llm_run(run_dir: str | Path) -> tuple[LMOnly, Any]:
    cfg, weights = read_llm(run_dir)
    model = LMOnly(cfg)
    load_llm_into(model.llm, weights, str(run_dir))
    return model, load_tokenizer(run_dir)
