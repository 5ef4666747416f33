"""The language model on its own: what the VLM stages start from, trained with the same loop and tools.

An LLM run directory looks like a VLM one without the vision parts:

    run/ config.json {"kind": "llm", "llm": {...}}   model.safetensors ("llm.*" keys)   tokenizer files

`--from-llm` accepts it (or a VLM run, whose LLM is taken), so nobody is stuck without base weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import LLMConfig
from ..data.tokenizer import load_tokenizer
from ..model.checkpoint import load_llm_weights
from ..model.llm import LMOutput, MiniMindLM
from ..runs import read_llm


class LMOnly(nn.Module):
    """A MiniMindLM behind the VLM's call signature, so the trainer drives both the same way."""

    def __init__(self, cfg: LLMConfig):
        super().__init__()
        self.llm = MiniMindLM(cfg)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, **kw: Any) -> LMOutput:
        if pixel_values is not None and len(pixel_values):
            raise ValueError("a language-model stage got images; use `train pretrain` / `train sft` for a VLM")
        return self.llm(input_ids, **kw)


def load_llm_run(run_dir: str | Path) -> tuple[LMOnly, Any]:
    cfg, weights = read_llm(run_dir)
    model = LMOnly(cfg)
    load_llm_weights(model.llm, weights, str(run_dir))
    return model, load_tokenizer(run_dir)
