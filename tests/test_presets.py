"""Every LLM preset builds, has the published parameter count, and matches the official checkpoint shapes.

Big presets are built on the meta device: shapes only, no memory, no time.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import official_key
from minimind_v.config import LLM_PRESETS, LLMConfig, llm_preset, minimind2_ffn, minimind3_ffn
from minimind_v.model.llm import MiniMindLM


def build_meta(cfg: LLMConfig) -> MiniMindLM:
    with torch.device("meta"):
        return MiniMindLM(cfg)


def count_by_formula(c: LLMConfig) -> int:
    """Tied embedding + per layer (attention, q/k norms, feed-forward, two norms) + the final norm."""
    hd = c.head_dim
    attn = c.dim * c.n_heads * hd * 2 + c.dim * c.n_kv_heads * hd * 2 + (2 * hd if c.qk_norm else 0)
    if c.use_moe:
        expert = 3 * c.dim * (c.moe_ffn_dim or c.ffn_dim)
        ffn = c.dim * c.n_experts + (c.n_experts + c.n_shared_experts) * expert
    else:
        ffn = 3 * c.dim * c.ffn_dim
    head = 0 if c.tie_embeddings else c.vocab_size * c.dim
    return c.vocab_size * c.dim + head + c.n_layers * (attn + ffn + 2 * c.dim) + c.dim


@pytest.mark.parametrize("name,count", [("minimind2-small", 25_829_888), ("minimind2", 104_030_976),
                                        ("minimind3-small", 30_025_216)])
def test_published_parameter_counts(name, count):
    assert build_meta(llm_preset(name)).num_parameters() == count


@pytest.mark.parametrize("name", list(LLM_PRESETS))
def test_every_preset_matches_the_formula(name):
    cfg = llm_preset(name)
    model = build_meta(cfg)
    assert model.num_parameters() == count_by_formula(cfg)
    assert model.lm_head.weight is model.embed_tokens.weight


def test_minimind3_sizes():
    cfg = llm_preset("minimind3")
    assert cfg.ffn_dim == minimind3_ffn(768) == 2432 and minimind2_ffn(512) == 1408 and minimind2_ffn(768) == 2048
    n = build_meta(cfg).num_parameters()
    assert n == count_by_formula(cfg)
    assert round(n / 1e6, 1) == 63.9  # minimind-3v's published LLM size


def test_tiny_presets_run_a_forward():
    for name in ("shapes-tiny", "shapes"):
        cfg = llm_preset(name)
        out = MiniMindLM(cfg).eval()(torch.zeros(1, 4, dtype=torch.long))
        assert out.logits.shape == (1, 4, cfg.vocab_size)


# --- the official manifests: key -> shape of the released checkpoints -------------------------------------

MANIFESTS = Path(os.environ.get("MINIMIND_V_SHARED", Path(__file__).resolve().parents[2] / "shared")) \
    / "compat" / "manifests"
OFFICIAL = {"MiniMind2-Small-V": "minimind2-small", "MiniMind2-V": "minimind2",
            "MiniMind2-V-MoE": "minimind2-small-moe", "minimind-3v": "minimind3", "minimind-3v-moe": "minimind3-moe"}
@pytest.mark.parametrize("official,preset", OFFICIAL.items())
def test_presets_match_official_checkpoint_shapes(official, preset):
    path = MANIFESTS / f"{official}.json"
    if not path.is_file():
        pytest.skip(f"official manifests not found at {MANIFESTS} (set MINIMIND_V_SHARED)")
    manifest = json.loads(path.read_text())
    is_a = "tok_embeddings.weight" in manifest
    theirs = {}
    for key, shape in manifest.items():
        if key == "config" or key.startswith(("vision_proj.", "output.", "lm_head.")):
            continue
        key = official_key(key, is_a)
        theirs[key] = list(shape)
    ours = {k: list(v.shape) for k, v in build_meta(llm_preset(preset)).state_dict().items() if k != "lm_head.weight"}
    assert ours == theirs
