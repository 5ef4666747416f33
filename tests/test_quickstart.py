"""The README's first command at smoke scale, and a tiny model that visibly learns."""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from minimind_v.config import LLMConfig, VisionConfig, VLMConfig
from minimind_v.data.batches import collate
from minimind_v.data.encode import SampleEncoder
from minimind_v.data.shapes_dataset import ShapesWorldDataset
from minimind_v.data.tokenizer import train_tokenizer
from minimind_v.model.vlm import MiniMindVLM
from minimind_v.quickstart import corpus
from minimind_v.train.trainer import TrainConfig, lm_loss, train


@pytest.mark.slow
def test_quickstart_smoke_end_to_end(tmp_path):
    exe = shutil.which("minimind-v") or f"{sys.executable} -m minimind_v.cli"
    out = tmp_path / "run"
    res = subprocess.run(f"{exe} quickstart --preset smoke --out {out}".split(), capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "loss.png", "eval.json",
                 "eval.md", "eval_grid.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "eval.json").read_text())["summary"]
    kinds = {"color", "shape", "count", "count_color", "exists", "position", "size", "caption", "compare_count",
             "which_has", "both_have", "digit"}
    assert kinds <= set(summary)
    assert summary["digit"]["n"] == 20  # the smoke preset scores 20 of the 360 held-out digits
    assert "| kind |" in res.stdout and "examples (pictures in" in res.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"vision", "pretrain", "sft"} <= {row["stage"] for row in rows}
    picked = [row for row in rows if row.get("event") == "dtype"]  # --dtype auto: measured, printed, recorded
    assert len(picked) == 1 and picked[0]["dtype"] in ("fp32", "bf16") and set(picked[0]["gflops"]) == {"fp32", "bf16"}
    assert f"dtype {picked[0]['dtype']}:" in res.stdout
    # the saved model answers through the one-shot CLI
    img = tmp_path / "a.png"
    from minimind_v.data import world

    world.render(world.sample_scene(random.Random(0)), size=64).save(img)
    res = subprocess.run(f"{exe} ask --model {out} --image {img} --max-new-tokens 4".split() +
                         ["What color is the circle?"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def test_tiny_vlm_loss_falls_on_the_shapes_world():
    torch.manual_seed(0)
    tok = train_tokenizer(corpus(200), vocab_size=400)
    cfg = VLMConfig(llm=LLMConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=448,
                                  max_seq_len=256),
                    vision=VisionConfig(kind="scratch", image_size=32, patch_size=8, width=32, layers=1, heads=2,
                                        merge=2),
                    image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"))
    model = MiniMindVLM(cfg)
    enc = SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, max_len=256)
    ds = ShapesWorldDataset(16, enc, image_size=32)
    fixed = collate([ds[i] for i in range(16)])
    with torch.no_grad():
        before = lm_loss(model.train(), fixed)[0].item()
    train(model, DataLoader(ds, batch_size=16, collate_fn=collate), TrainConfig(steps=30, batch_size=16, lr=3e-3),
          device=torch.device("cpu"))
    with torch.no_grad():
        after = lm_loss(model, fixed)[0].item()
    assert after < 0.6 * before, (before, after)
