"""The run directory round trip and the load/answer API."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import minimind_v
from minimind_v.model.checkpoint import load_run


def test_run_directory_round_trip(tiny_run):
    files = {p.name for p in tiny_run.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vision"} <= files
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["vision"]["path"] == "vision"  # relative: the folder can be moved
    model, tok = load_run(tiny_run)
    assert model.llm.lm_head.weight is model.llm.embed_tokens.weight
    model2, _ = load_run(tiny_run)
    ids = torch.tensor([[1, 5, 6, 7]])
    torch.testing.assert_close(model(ids).logits, model2(ids).logits)


def test_load_answer_and_stream(tiny_run):
    vlm = minimind_v.load(str(tiny_run), device="cpu")
    im = Image.new("RGB", (50, 40), (200, 30, 30))
    a = vlm.answer([im], "<image>\nWhat color is the circle?", max_new_tokens=5)
    assert isinstance(a, str)
    assert vlm.answer([im], "<image>\nWhat color is the circle?", max_new_tokens=5) == a  # greedy: deterministic
    pieces = list(vlm.stream_chat([{"role": "user", "content": "<image>\nDescribe the image."}], [im],
                                  max_new_tokens=5))
    assert "".join(pieces).strip() == vlm.answer([im], "<image>\nDescribe the image.", max_new_tokens=5)
    batch = vlm.answer_batch([([im], "<image>\nHi"), ([im, im], "<image>\n<image>\nWhich image has more shapes?")],
                             max_new_tokens=5)
    assert batch[0] == vlm.answer([im], "<image>\nHi", max_new_tokens=5)


def test_marker_image_mismatch_is_a_clear_error(tiny_run):
    vlm = minimind_v.load(str(tiny_run), device="cpu")
    im = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="2 images"):
        vlm.answer([im, im], "<image>\nWhat?")


def test_not_a_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a minimind-v run directory"):
        minimind_v.load(str(tmp_path))
