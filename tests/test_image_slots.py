"""Image slots: each image token also says which image of its sample it belongs to (VLMConfig.image_slots)."""
from __future__ import annotations

import pytest
import torch

from minimind_v.config import LLMConfig, VisionConfig, VLMConfig
from minimind_v.data.batches import PackCollate, PadCollate
from minimind_v.model.vlm import MiniMindVLM, image_ordinals
from minimind_v.train.trainer import LossModule

IMG = 3


def slotted_vlm(slots: int = 3) -> MiniMindVLM:
    torch.manual_seed(0)
    cfg = VLMConfig(llm=LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64,
                                  max_seq_len=128),
                    vision=VisionConfig(kind="scratch", image_size=32, patch_size=8, width=16, layers=1, heads=2,
                                        merge=2),
                    image_token_id=IMG, image_slots=slots)
    m = MiniMindVLM(cfg).eval()
    if slots:
        with torch.no_grad():
            m.image_slot.weight.normal_()  # zero at the start of training; random here so that it shows
    return m


def test_ordinals_count_images_per_row_and_per_packed_document():
    t = True
    is_image = torch.tensor([[0, t, t, 0, t, t, t, t, 0], [t, t, 0, 0, 0, 0, 0, 0, 0]]).bool()
    # row 0: an image, a word, then two images back to back; row 1: one image
    assert image_ordinals(is_image, 2).tolist() == [0, 0, 1, 1, 2, 2, 0, 0]
    docs = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1], [0] * 9])  # the second document starts at position 4
    assert image_ordinals(is_image, 2, docs).tolist() == [0, 0, 0, 0, 1, 1, 0, 0]


def test_each_image_gets_its_slot_and_later_images_share_the_last():
    m = slotted_vlm(slots=2)
    t = m.tokens_per_image
    ids = torch.tensor([[1] + [IMG] * t + [10] + [IMG] * t + [10] + [IMG] * t + [5]])
    feats = torch.randn(3, t, 32)
    out = m.splice(ids, m.llm.embed(ids), feats)[0]
    pos = (ids[0] == IMG).nonzero().flatten()
    slot = m.image_slot.weight
    torch.testing.assert_close(out[pos[:t]], feats[0] + slot[0])
    torch.testing.assert_close(out[pos[t:2 * t]], feats[1] + slot[1])
    torch.testing.assert_close(out[pos[2 * t:]], feats[2] + slot[1])


def test_no_slots_no_parameter_and_zero_slots_change_nothing():
    plain = slotted_vlm(slots=0)
    assert plain.image_slot is None and not any("image_slot" in k for k in plain.state_dict())
    fresh = MiniMindVLM(VLMConfig(llm=plain.cfg.llm, vision=plain.cfg.vision, image_token_id=IMG, image_slots=4))
    assert fresh.image_slot.weight.abs().sum() == 0  # a new model starts as the plain splice


def _two_image_samples(m: MiniMindVLM, n: int) -> list[dict]:
    t, g = m.tokens_per_image, torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        ids = torch.tensor([1] + [IMG] * t + [10] + [IMG] * t + [10] + [20 + i, 21, 22, 2])
        labels = torch.full_like(ids, -100)
        labels[-3:] = ids[-3:]
        out.append({"input_ids": ids, "labels": labels, "pixel_values": torch.randn(2, 3, 32, 32, generator=g)})
    return out


def test_packed_and_padded_batches_agree_with_slots():
    """Packing restarts the count at each document: its second image is slot 1, not slot 3."""
    m = slotted_vlm()
    samples = _two_image_samples(m, 4)
    f = LossModule(m)
    with torch.no_grad():
        padded, _, _ = f(PadCollate()(samples))
        packed, _, _ = f(PackCollate(max_len=128)(samples))
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_slots_save_load_and_export(tmp_path, weights):
    from transformers import AutoModelForCausalLM

    from minimind_v.data.tokenizer import train_tokenizer
    from minimind_v.interop.hf_export import export_hf
    from minimind_v.model.checkpoint import load_run, save_run

    torch.manual_seed(0)
    tok = train_tokenizer(["Which image has the red circle?", "The second image."] * 20, vocab_size=300)
    cfg = VLMConfig(llm=LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=320,
                                  max_seq_len=128),
                    vision=VisionConfig(kind="cnn", image_size=48, width=16, layers=1, merge=1), image_token_id=3,
                    image_slots=4)
    model = MiniMindVLM(cfg).eval()
    with torch.no_grad():
        model.image_slot.weight.normal_()
    save_run(model, tok, tmp_path / "run")
    ours, _ = load_run(tmp_path / "run", weights=weights)
    torch.testing.assert_close(ours.image_slot.weight, model.image_slot.weight)
    t = ours.tokens_per_image
    ids = torch.tensor([[1] + [3] * t + [10] + [3] * t + [10, 5, 6]])
    px = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        want = ours(ids, px).logits
    if weights == "fp32":
        export_hf(tmp_path / "run", tmp_path / "hf")
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
        with torch.no_grad():
            got = hf(input_ids=ids, pixel_values=px).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the slots matter: swapping the two images' slot rows changes the answer
        ours.image_slot.weight[[0, 1]] = ours.image_slot.weight[[1, 0]].clone()
        assert (ours(ids, px).logits - want).abs().max() > 1e-4
