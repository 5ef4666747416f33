"""The VLM's splice, the encoders' interface, the projector and the generation loop."""
from __future__ import annotations

import pytest
import torch

from minimind_v.config import LLMConfig, VisionConfig, VLMConfig
from minimind_v.infer.generate import GenerationConfig, generate
from minimind_v.model.projector import Projector
from minimind_v.model.vision import VisionEncoder, pixel_shuffle
from minimind_v.model.vlm import MiniMindVLM, PlaceholderMismatch

IMG = 3  # placeholder id


def tiny_vlm(projector: str = "mlp", merge: int = 2) -> MiniMindVLM:
    torch.manual_seed(0)
    cfg = VLMConfig(llm=LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64,
                                  max_seq_len=128),
                    vision=VisionConfig(kind="scratch", image_size=32, patch_size=8, width=16, layers=1, heads=2,
                                        merge=merge),
                    projector=projector, image_token_id=IMG)
    return MiniMindVLM(cfg).eval()


def prompt(n_images: int, per_image: int, text: list[int]) -> list[int]:
    ids = [1]
    for _ in range(n_images):
        ids += [IMG] * per_image + [10]
    return ids + text


def test_pixel_shuffle_groups_neighbouring_patches():
    g, c = 4, 2
    x = torch.arange(g * g * c, dtype=torch.float).view(1, g * g, c)
    y = pixel_shuffle(x, 2)
    assert y.shape == (1, 4, 8)
    # the first merged token holds patches (0,0), (0,1), (1,0), (1,1) of the 4x4 grid
    expected = torch.cat([x[0, 0], x[0, 1], x[0, 4], x[0, 5]])
    assert torch.equal(y[0, 0], expected)
    with pytest.raises(ValueError):
        pixel_shuffle(torch.zeros(1, 9, 2), 2)


def test_encoder_shapes_and_token_count():
    m = tiny_vlm()
    assert m.tokens_per_image == 4 and m.vision.out_dim == 64
    feats = m.vision(torch.randn(3, 3, 32, 32))
    assert feats.shape == (3, 4, 64)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_projector_kinds(kind):
    p = Projector(kind, 16, 32)
    assert p(torch.randn(2, 5, 16)).shape == (2, 5, 32)
    keys = set(p.state_dict())
    assert keys == ({"linear.weight", "linear.bias"} if kind == "linear" else
                    {f"mlp.{i}.{w}" for i in (0, 1, 3) for w in ("weight", "bias")})
    with pytest.raises(ValueError):
        Projector("conv", 16, 32)


def test_splice_places_each_image_in_order_across_rows():
    m = tiny_vlm()
    t = m.tokens_per_image
    ids = torch.tensor([prompt(2, t, [5, 6]), prompt(1, t, [5, 6, 7, 8, 9, 11, 12])])
    assert ids.shape[1] == len(prompt(2, t, [5, 6]))
    img_embeds = torch.randn(3, t, 32)
    out = m.splice(ids, m.llm.embed(ids), img_embeds)
    pos0 = (ids[0] == IMG).nonzero().squeeze(-1)
    pos1 = (ids[1] == IMG).nonzero().squeeze(-1)
    assert torch.equal(out[0, pos0[:t]], img_embeds[0])
    assert torch.equal(out[0, pos0[t:]], img_embeds[1])
    assert torch.equal(out[1, pos1], img_embeds[2])
    text = ids != IMG
    assert torch.equal(out[text], m.llm.embed(ids)[text])


def test_placeholder_mismatch_is_a_clear_error():
    m = tiny_vlm()
    t = m.tokens_per_image
    ids = torch.tensor([prompt(2, t, [5])])
    with pytest.raises(PlaceholderMismatch, match="2 images' worth"):
        m(ids, torch.randn(1, 3, 32, 32))
    with pytest.raises(PlaceholderMismatch, match="no image"):
        m(ids)


def test_batched_multi_image_forward_equals_one_by_one():
    m = tiny_vlm()
    t = m.tokens_per_image
    px = torch.randn(3, 3, 32, 32)
    a, b = prompt(2, t, [5, 6, 7]), prompt(1, t, [8])
    solo_a = m(torch.tensor([a]), px[:2]).logits[0]
    solo_b = m(torch.tensor([b]), px[2:]).logits[0]
    # right-pad b to a's length: causal attention keeps real tokens blind to the padding
    pad = [0] * (len(a) - len(b))
    batch = m(torch.tensor([a, b + pad]), px).logits
    torch.testing.assert_close(batch[0], solo_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch[1, :len(b)], solo_b, atol=1e-5, rtol=1e-5)


def test_batched_generation_equals_one_by_one_and_full_forward():
    m = tiny_vlm()
    t = m.tokens_per_image
    px = torch.randn(2, 3, 32, 32)
    prompts = [prompt(1, t, [5, 6, 7, 8]), prompt(1, t, [9])]
    gen = GenerationConfig(max_new_tokens=6)
    both = generate(m, prompts, px, gen)
    one = [generate(m, [prompts[i]], px[i:i + 1], gen)[0] for i in range(2)]
    assert both == one
    # greedy with the cache equals arg-max of full forwards without it
    ids = list(prompts[0])
    for _ in range(6):
        ids.append(int(m(torch.tensor([ids]), px[:1]).logits[0, -1].argmax()))
    assert one[0] == ids[len(prompts[0]):]


def test_missing_encoder_folder_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot see"):
        VisionEncoder(VisionConfig(kind="clip", path=str(tmp_path / "nope")))


def test_cnn_encoder_tokens_carry_their_cell_and_round_trip(tmp_path):
    enc = VisionEncoder(VisionConfig(kind="cnn", image_size=96, width=32, layers=1, merge=2)).eval()
    assert enc.n_tokens == 9 and enc.out_dim == 128
    px = torch.zeros(2, 3, 96, 96)  # a blank image: only the coordinate channels tell the tokens apart
    f = enc(px)
    assert f.shape == (2, 9, 128)
    assert (f[0, 0] - f[0, 8]).abs().max() > 1e-4
    enc.save_pretrained(tmp_path)
    again = VisionEncoder(VisionConfig(kind="cnn", path=str(tmp_path), image_size=96, width=32, layers=1,
                                       merge=2)).eval()
    torch.testing.assert_close(again(px), f)


def test_cnn_run_exports_to_transformers(tmp_path):
    """A run with the from-scratch CNN encoder saves, reloads and exports with the same logits."""
    from transformers import AutoModelForCausalLM

    from minimind_v.config import LLMConfig
    from minimind_v.data.tokenizer import train_tokenizer
    from minimind_v.interop.hf_export import export_hf
    from minimind_v.model.checkpoint import load_run, save_run

    torch.manual_seed(0)
    tok = train_tokenizer(["What color is the circle?", "The circle is red."] * 20, vocab_size=300)
    cfg = VLMConfig(llm=LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=320,
                                  max_seq_len=128),
                    vision=VisionConfig(kind="cnn", image_size=48, width=16, layers=1, merge=1), image_token_id=3)
    save_run(MiniMindVLM(cfg).eval(), tok, tmp_path / "run")
    ours, _ = load_run(tmp_path / "run")
    export_hf(tmp_path / "run", tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    ids = torch.tensor([prompt(1, ours.tokens_per_image, [5, 6, 7])])
    px = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        want = ours(ids, px).logits
        got = hf(input_ids=ids, pixel_values=px).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
