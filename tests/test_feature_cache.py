"""Feature cache: a frozen encoder's features are computed once per image, reused across epochs and stages,
keyed by image content and encoder, and give the loss the uncached path gives."""
from __future__ import annotations

import argparse

import pytest
import torch
from conftest import write_tiny_llm_run

from minimind_v.config import VLMConfig
from minimind_v.data.batches import PadCollate
from minimind_v.data.encode import SampleEncoder
from minimind_v.data.feature_cache import CachedSampleEncoder, FeatureCache, FeatureFiller, encoder_key
from minimind_v.data.formats import SampleReader
from minimind_v.data.robust import RowDataset
from minimind_v.data.synthetic import synthetic_rows, write_jsonl, write_tiny_encoder
from minimind_v.model.vlm import MiniMindVLM
from minimind_v.runs import read_llm
from minimind_v.train import cli_train
from minimind_v.train.recipes import vision_recipe
from minimind_v.train.stage import StageOptions, run_stage
from minimind_v.train.trainer import LossModule


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fcache")
    enc = write_tiny_encoder("siglip", root / "siglip", image_size=32, patch_size=8)
    llm = write_tiny_llm_run(root / "llm")
    rows, _ = synthetic_rows(24, seed=4, broken=0.0)
    rows[5]["images"] = rows[3]["images"]  # the same picture twice: one cache entry
    data = write_jsonl(rows, root / "d.jsonl", root / "im")
    return root, enc, llm, data


def _vlm(enc, llm, merge=1):
    llm_cfg, weights = read_llm(llm)
    from minimind_v.data.tokenizer import load_tokenizer

    tok = load_tokenizer(llm)
    cfg = VLMConfig(llm=llm_cfg, vision=vision_recipe("siglip2-b32").vision_config(str(enc), merge),
                    image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"))
    torch.manual_seed(0)
    return MiniMindVLM(cfg).eval(), tok


def test_cached_features_give_the_uncached_loss_and_are_reused(world, tmp_path):
    root, enc, llm, data = world
    model, tok = _vlm(enc, llm)
    reader = SampleReader(data, image_dir=root / "im")
    cache = FeatureCache(tmp_path, encoder_key(model.vision))
    cached = RowDataset(reader, CachedSampleEncoder(tok, model.vision.preprocess, model.tokens_per_image,
                                                    model.vision.out_dim, cache), decode=False)
    plain = RowDataset(reader, SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image))
    fill = FeatureFiller(model.vision, cache)
    f = LossModule(model)
    for epoch in range(2):
        for lo in range(0, 24, 8):
            a = fill(PadCollate()([cached[i] for i in range(lo, lo + 8)]))
            b = PadCollate()([plain[i] for i in range(lo, lo + 8)])
            assert "pixel_values" not in a and a["vision_feats"].dtype == torch.float16
            with torch.no_grad():
                la, lb = f(a)[0], f(b)[0]
            assert torch.allclose(la, lb, rtol=2e-3), (epoch, la, lb)  # fp16 features, same loss
        if epoch == 0:
            assert (fill.misses, fill.hits) == (24, 0)
            assert len(list(cache.dir.rglob("*.npy"))) == 23  # one file per distinct image
    assert (fill.misses, fill.hits) == (24, 24)  # the second epoch encoded nothing


def test_encoder_key_changes_with_the_encoder_and_its_options(world, tmp_path):
    root, enc, llm, _ = world
    a = encoder_key(_vlm(enc, llm)[0].vision)
    assert a == encoder_key(_vlm(enc, llm)[0].vision)
    assert a != encoder_key(_vlm(enc, llm, merge=2)[0].vision)
    other = write_tiny_encoder("siglip", tmp_path / "other", image_size=32, patch_size=8, seed=1)
    assert a != encoder_key(_vlm(other, llm)[0].vision)


def test_damaged_entry_is_recomputed(tmp_path):
    cache = FeatureCache(tmp_path, "k")
    cache.put("ab" * 16, torch.ones(4, 8).numpy())
    assert cache.get("ab" * 16).dtype.name == "float16"
    cache.path("ab" * 16).write_bytes(b"not an array")
    assert cache.get("ab" * 16) is None


def test_stage_with_feature_cache_reuses_features_across_epochs_and_stages(world, tmp_path):
    root, enc, llm, data = world
    p = argparse.ArgumentParser()
    cli_train.add_parser(p.add_subparsers(dest="command"))
    common = ["--data", str(data), "--images", str(root / "im"), "--feature-cache", str(tmp_path / "fc"),
              "--batch-size", "8", "--workers", "0", "--log-every", "100", "--threads", "1", "--device", "cpu"]

    def options(argv: list[str]) -> StageOptions:
        return cli_train.stage_options(p.parse_args(argv))

    first = run_stage(options(["train", "pretrain", "--from-llm", str(llm), "--vision-path", str(enc),
                               "--out", str(tmp_path / "pre"), "--steps", "6", *common]), say=lambda s: None)
    fc = first["feature_cache"]  # 2 epochs of 24 rows, 23 distinct images (a shared image may miss twice if
    assert fc["misses"] + fc["hits"] == 48 and fc["misses"] in (23, 24)  # both rows land in one batch)
    assert len(list((tmp_path / "fc").rglob("*.npy"))) == 23
    second = run_stage(options(["train", "sft", "--from", str(tmp_path / "pre"), "--out",
                                str(tmp_path / "sft"), "--steps", "3", *common]), say=lambda s: None)
    assert second["feature_cache"] == {"misses": 0, "hits": 24}  # the next stage encodes nothing


def test_image_slots_train_through_a_stage_and_the_feature_cache(world, tmp_path):
    """`--image-slots N` builds the VLM with N slot embeddings; they train (features from the cache go through the
    same splice) and are saved with the run."""
    from minimind_v.model.checkpoint import load_run

    root, enc, llm, data = world
    p = argparse.ArgumentParser()
    cli_train.add_parser(p.add_subparsers(dest="command"))
    argv = ["train", "pretrain", "--from-llm", str(llm), "--vision-path", str(enc), "--out", str(tmp_path / "pre"),
            "--steps", "3", "--image-slots", "2", "--data", str(data), "--images", str(root / "im"),
            "--feature-cache", str(tmp_path / "fc"), "--batch-size", "8", "--workers", "0", "--threads", "1",
            "--device", "cpu", "--lr", "1e-2"]
    run_stage(cli_train.stage_options(p.parse_args(argv)), say=lambda s: None)
    model, _ = load_run(tmp_path / "pre")
    assert model.cfg.image_slots == 2
    assert model.image_slot.weight[0].abs().sum() > 0  # started at zero, trained
