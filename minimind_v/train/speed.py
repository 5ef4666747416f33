"""Measure what packing and the feature cache buy, on the same rows and the same model.

    python -m minimind_v.train.speed --preset minimind2-small --encoder siglip2-b32 --batch 4 --max-len 768

Synthetic rows shaped like the reference benchmark's "realistic" set (a 256 px image, answers of 20-120 words),
a randomly initialised encoder of the real size (SigLIP2 B/32 or CLIP B/16; random weights cost what trained
ones cost), and one training step timed again and again:
  - layouts: padded to max_len (what the reference does), padded to the batch's longest, packed;
    the loss of each step is recorded too, to show packing changes the speed and not the numbers;
  - feature cache: the same pretrain step (projector only trains) with the encoder run every step,
    and with its features read from the cache.
Prints a JSON report (and writes it with --out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..config import IMAGE_TOKEN, VLMConfig, llm_preset
from ..data.batches import PackCollate, PadCollate
from ..data.encode import SampleEncoder
from ..data.feature_cache import CachedSampleEncoder, FeatureCache, FeatureFiller, encoder_key
from ..data.formats import SampleReader
from ..data.robust import RowDataset
from ..data.synthetic import WORDS, synthetic_rows, write_parquet
from ..data.tokenizer import train_tokenizer
from ..encoder_files import write_random_encoder
from ..model.vlm import MiniMindVLM
from .freeze import apply_freeze
from .optim import make_optimizer
from .recipes import vision_recipe
from .trainer import LossModule, TrainConfig


def random_encoder(recipe: str, out: Path) -> Path:
    """A randomly initialised encoder with the real architecture of a recipe, saved like a downloaded one."""
    clip = recipe == "clip-b16"
    return write_random_encoder("clip" if clip else "siglip", out, image_size=224 if clip else 256,
                                patch_size=16 if clip else 32, width=768, layers=12, heads=12, ffn=3072)


class Setting:
    """One way of running a training step, with its own copy of the model and optimizer."""

    def __init__(self, model: torch.nn.Module, batches: list[dict[str, Any]], prepare=None):
        self.model, self.batches, self.prepare = model, batches, prepare
        self.opt = make_optimizer(model, TrainConfig(lr=1e-4))
        self.f = LossModule(model)
        self.times: list[float] = []
        self.losses: list[float] = []
        self.real = 0

    def step(self, k: int) -> None:
        """Forward + backward + AdamW on batch k (batch 0 is a warm-up and is not timed)."""
        t = time.perf_counter()
        b = self.prepare(dict(self.batches[k])) if self.prepare else self.batches[k]
        loss_sum, n, _ = self.f(b)
        (loss_sum / n).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if k:
            self.times.append(time.perf_counter() - t)
            self.real += int(b["attention_mask"].sum())
        self.losses.append(round((loss_sum / n).item(), 4))

    def report(self) -> dict[str, Any]:
        return {"step_s": round(statistics.median(self.times), 3),
                "real_tokens_per_s": round(self.real / sum(self.times), 1),
                "row_tokens": int(self.batches[1]["input_ids"].numel()), "losses": self.losses}


def run_interleaved(settings: dict[str, Setting], steps: int) -> dict[str, Any]:
    """Step every setting in turn, so a machine whose load changes slows them all alike."""
    for k in range(steps):
        for s in settings.values():
            s.step(k)
    return {name: s.report() for name, s in settings.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="minimind2-small")
    ap.add_argument("--encoder", default="siglip2-b32", choices=["siglip2-b32", "clip-b16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=768)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per setting (plus one warm-up)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--what", default="layouts,cache")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="minimind_v_speed_"))
    n = a.batch * (a.steps + 1)
    rows, _ = synthetic_rows(n, seed=0, words=(20, 120), image_size=256)
    data = write_parquet(rows, tmp / "rows.parquet")
    tok = train_tokenizer([" ".join(WORDS)] * 50, vocab_size=400)
    recipe = vision_recipe(a.encoder)
    enc_dir = random_encoder(a.encoder, tmp / a.encoder)
    cfg = VLMConfig(llm=llm_preset(a.preset, vocab_size=6400), vision=recipe.vision_config(str(enc_dir)),
                    projector=recipe.projector, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN))
    torch.manual_seed(0)
    model = MiniMindVLM(cfg)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    model.vision.requires_grad_(False)
    reader = SampleReader(data)
    enc = SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, max_len=a.max_len)
    samples = [enc(reader[i]) for i in range(n)]
    groups = [samples[i:i + a.batch] for i in range(0, n, a.batch)]
    report: dict[str, Any] = {"preset": a.preset, "encoder": a.encoder, "batch": a.batch, "max_len": a.max_len,
                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "tokens_per_sample_mean": round(sum(len(s["input_ids"]) for s in samples) / n, 1)}
    # Fill the feature cache (the first epoch of a cached run), then read every row back from it.
    cache = FeatureCache(tmp / "cache", encoder_key(model.vision))
    ds = RowDataset(reader, CachedSampleEncoder(tok, model.vision.preprocess, model.tokens_per_image,
                                                model.vision.out_dim, cache, max_len=a.max_len), decode=False)
    filler = FeatureFiller(model.vision, cache)
    for g in range(0, n, a.batch):
        filler(PadCollate()([ds[i] for i in range(g, g + a.batch)]))
    t = time.perf_counter()
    cached = [ds[i] for i in range(n)]
    report["cache_read_s_per_sample"] = round((time.perf_counter() - t) / n, 4)
    cgroups = [cached[i:i + a.batch] for i in range(0, n, a.batch)]
    settings: dict[str, Setting] = {}

    def fresh(freeze_llm: int) -> MiniMindVLM:
        torch.manual_seed(0)
        m = MiniMindVLM(cfg, vision=model.vision)  # one shared frozen encoder
        m.load_state_dict(init)
        apply_freeze(m, freeze_llm=freeze_llm)
        return m

    if "cache" in a.what:  # the pretrain stage: the encoder is frozen, the projector learns
        settings["pretrain_no_cache"] = Setting(fresh(2), [PadCollate()(g) for g in groups])
        settings["pretrain_cached"] = Setting(fresh(2), [PadCollate()(g) for g in cgroups], prepare=filler)
    if "layouts" in a.what:  # on cached features, so the encoder does not blur the comparison
        for name, collate in (("padded_to_max", PadCollate(pad_to=a.max_len)), ("padded_to_longest", PadCollate()),
                              ("packed", PackCollate(a.max_len))):
            settings[name] = Setting(fresh(0), [collate(g) for g in cgroups], prepare=filler)
    report.update(run_interleaved(settings, a.steps + 1))
    if "cache" in a.what:
        report["cache_speedup"] = round(report["pretrain_no_cache"]["step_s"] / report["pretrain_cached"]["step_s"], 2)
    if "layouts" in a.what:
        report["packing_speedup_vs_longest"] = round(
            report["packed"]["real_tokens_per_s"] / report["padded_to_longest"]["real_tokens_per_s"], 2)
        report["packing_speedup_vs_max"] = round(
            report["packed"]["real_tokens_per_s"] / report["padded_to_max"]["real_tokens_per_s"], 2)
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
