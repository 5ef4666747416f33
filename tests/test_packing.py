"""Packing: several samples per row, attention and positions per sample, the same loss as padded rows."""
from __future__ import annotations

import torch

from minimind_v.data.batches import PackCollate, PadCollate, first_fit_decreasing
from minimind_v.data.encode import SampleEncoder
from minimind_v.data.synthetic import synthetic_rows
from minimind_v.model.checkpoint import load_run
from minimind_v.train.loader import EpochLoader
from minimind_v.train.trainer import LossModule


def test_first_fit_decreasing_respects_capacity_and_keeps_every_sample():
    lengths = [5, 9, 3, 7, 2, 8, 1]
    bins = first_fit_decreasing(lengths, 10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 4  # 35 tokens need at least 4 rows of 10


def _samples(tiny_run, n=6, images=1):
    model, tok = load_run(tiny_run)
    rows, _ = synthetic_rows(n, seed=11, images=images, words=(2, 20))
    enc = SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, max_len=200)
    from io import BytesIO

    from PIL import Image

    samples = [enc({"conversations": r["conversations"], "images": [Image.open(BytesIO(b)) for b in r["images"]]})
               for r in rows]
    return model, samples


def test_packed_batch_has_the_same_loss_as_the_padded_batch(tiny_run):
    model, samples = _samples(tiny_run, n=6)
    padded = PadCollate()(samples)
    packed = PackCollate(max_len=200)(samples)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # fewer rows
    assert packed["attention_mask"].sum() == padded["attention_mask"].sum()  # the same real tokens
    f = LossModule(model)
    with torch.no_grad():
        a_sum, a_n, _ = f(padded)
        b_sum, b_n, _ = f(packed)
    assert a_n == b_n
    assert torch.allclose(a_sum, b_sum, rtol=1e-5), (a_sum, b_sum)


def test_packed_images_follow_the_placeholder_order(tiny_run):
    model, samples = _samples(tiny_run, n=5, images=2)
    for k, s in enumerate(samples):  # make every image distinguishable
        s["pixel_values"] = torch.full_like(s["pixel_values"], float(k))
        s["pixel_values"][1] += 0.5
    packed = PackCollate(max_len=400)(samples)
    order, seen = [], set()
    for r in range(packed["doc_ids"].shape[0]):  # which sample each document of each row is
        for d in packed["doc_ids"][r].unique().tolist():
            if d < 0:
                continue
            ids = packed["input_ids"][r][packed["doc_ids"][r] == d]
            k = next(k for k, s in enumerate(samples) if k not in seen and torch.equal(s["input_ids"], ids))
            seen.add(k)
            order.append(k)
    expected = torch.cat([samples[k]["pixel_values"] for k in order])
    assert torch.equal(packed["pixel_values"], expected)


def test_no_attention_across_samples(tiny_run):
    """Changing the first sample of a packed row leaves the second sample's loss unchanged."""
    model, samples = _samples(tiny_run, n=2)
    first, second = sorted(samples, key=lambda s: -len(s["input_ids"]))  # packing places the longer first
    f = LossModule(model)
    quiet = dict(first, labels=torch.full_like(first["labels"], -100))  # only the second sample counts
    edited = dict(quiet, input_ids=first["input_ids"].clone())
    edited["input_ids"][-6:-3] = 7  # answer tokens, not image placeholders
    a, b = PackCollate(max_len=400)([quiet, second]), PackCollate(max_len=400)([edited, second])
    assert a["input_ids"].shape[0] == 1 and a["doc_ids"].max() == 1
    assert torch.equal(a["input_ids"][0, :len(first["input_ids"])], first["input_ids"])  # first really is first
    with torch.no_grad():
        x, _, _ = f(a)
        y, _, _ = f(b)
    assert torch.allclose(x, y, atol=1e-6)


def test_length_grouping_puts_similar_lengths_together():
    lengths = list(range(200))
    ds = list(range(200))
    loader = EpochLoader(ds, 10, collate_fn=list, seed=0, lengths=lengths)
    spread = [max(b) - min(b) for b in [next(loader.batch_indices(0))]]
    it = loader.batch_indices(0)
    spreads = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in (next(it) for _ in range(20))]
    assert max(spreads) < 20 and spread[0] < 20  # random batches would spread over ~170
    order = loader.order(0)
    assert sorted(order.tolist()) == ds  # still every sample once per epoch
