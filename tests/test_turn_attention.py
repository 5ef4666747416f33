""""turn" attention: the tokens of a user turn that holds images see each other; everything else stays causal."""
from __future__ import annotations

import pytest
import torch

from minimind_v.config import LLMConfig, VisionConfig, VLMConfig
from minimind_v.model.checkpoint import load_run, save_run
from minimind_v.model.llm import attention_plan
from minimind_v.model.vlm import MiniMindVLM, image_turns

IMG, START, END = 3, 1, 2


def tiny(attention: str) -> MiniMindVLM:
    torch.manual_seed(0)
    cfg = VLMConfig(llm=LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64,
                                  max_seq_len=128),
                    vision=VisionConfig(kind="scratch", image_size=32, patch_size=8, width=16, layers=1, heads=2,
                                        merge=2),
                    image_token_id=IMG, attention=attention, turn_start_id=START if attention == "turn" else -1)
    return MiniMindVLM(cfg).eval()


def dialogue(question: list[int], answer: list[int], per_image: int = 4) -> list[int]:
    """<start> user \\n [image] \\n question <end> \\n <start> assistant \\n answer"""
    return [START, 20, 11] + [IMG] * per_image + [11] + question + [END, 11, START, 21, 11] + answer


def test_block_ids_mark_the_turns_that_hold_images():
    ids = torch.tensor([[9, START, 5, IMG, IMG, 6, END, START, 7, 8, END, START, 5, 6, END, START, IMG, 9]])
    # words of an image turn +k, its image tokens -k, every other turn 0
    assert image_turns(ids, START, IMG).tolist() == [[0, 1, 1, -1, -1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 4, -4, 4]]
    # an image before any turn opener belongs to no block (it stays causal)
    assert image_turns(torch.tensor([[IMG, 5, START, 6]]), START, IMG).tolist() == [[0, 0, 0, 0]]


def test_image_tokens_read_the_question_but_answers_stay_causal():
    torch.manual_seed(1)
    px = torch.randn(1, 3, 32, 32)
    a, b = dialogue([30, 31], [40, 41, 42]), dialogue([30, 32], [40, 41, 42])
    img = [i for i, t in enumerate(a) if t == IMG]
    for attention, image_sees_question in (("turn", True), ("causal", False)):
        model = tiny(attention)
        with torch.no_grad():
            ha = model(torch.tensor([a]), px).hidden
            hb = model(torch.tensor([b]), px).hidden
            # the answer's last token changed: no earlier position may notice
            hc = model(torch.tensor([a[:-1] + [43]]), px).hidden
        changed = not torch.allclose(ha[0, img], hb[0, img], atol=1e-6)
        assert changed == image_sees_question, attention
        torch.testing.assert_close(hc[0, :-1], ha[0, :-1], atol=1e-6, rtol=0)


def test_an_image_reads_the_words_after_it_but_not_a_later_image():
    """Two images in one turn: the first one's tokens may read the question, never the second picture's tokens
    ("first" must stay a thing the model can tell); the next turn reads nothing ahead."""
    ids = [START, 20, 11] + [IMG] * 4 + [11] + [IMG] * 4 + [11, 30, 31, END, 11, START, 21, 11, 40]
    blocks = image_turns(torch.tensor([ids]), START, IMG)
    mask, _ = attention_plan(len(ids), 0, None, None, torch.device("cpu"), blocks=blocks)
    mask = mask[0, 0]
    img = [i for i, t in enumerate(ids) if t == IMG]
    first, second = img[:4], img[4:]
    words_after = [i for i in range(second[-1] + 1, ids.index(START, 1))]
    assert not mask[first][:, second].any()
    assert mask[first][:, words_after].all()
    assert mask[second][:, first].all() and mask[second][:, words_after].all()
    answer = ids.index(START, 1)
    assert torch.equal(mask[answer:], torch.ones(len(ids), len(ids), dtype=torch.bool).tril()[answer:])


def test_cached_generation_equals_one_full_forward():
    """Prefill (with its blocks) + one-token steps over the cache give the full forward's logits."""
    model = tiny("turn")
    torch.manual_seed(2)
    px = torch.randn(1, 3, 32, 32)
    ids = dialogue([30, 31, 33], [40, 41, 42, 43])
    n_prompt = len(ids) - 4
    with torch.no_grad():
        full = model(torch.tensor([ids]), px).logits[0]
        cache = model.llm.new_cache(1, len(ids))
        steps = [model(torch.tensor([ids[:n_prompt]]), px, cache=cache).logits[0, -1]]
        for t in ids[n_prompt:-1]:
            steps.append(model(torch.tensor([[t]]), None, cache=cache).logits[0, -1])
    torch.testing.assert_close(torch.stack(steps), full[n_prompt - 1:-1], atol=1e-5, rtol=1e-5)


def test_packed_rows_equal_separate_samples():
    model = tiny("turn")
    torch.manual_seed(3)
    px = torch.randn(2, 3, 32, 32)
    s1, s2 = dialogue([30, 31], [40, 41]), dialogue([32, 33, 34], [42])
    with torch.no_grad():
        one = model(torch.tensor([s1]), px[:1]).logits[0]
        two = model(torch.tensor([s2]), px[1:]).logits[0]
        doc_ids = torch.tensor([[0] * len(s1) + [1] * len(s2)])
        packed = model(torch.tensor([s1 + s2]), px, doc_ids=doc_ids).logits[0]
    torch.testing.assert_close(packed, torch.cat([one, two]), atol=1e-5, rtol=1e-5)


def test_left_padded_batch_equals_single_rows():
    model = tiny("turn")
    torch.manual_seed(4)
    px = torch.randn(2, 3, 32, 32)
    s1, s2 = dialogue([30], []), dialogue([30, 31, 32, 33], [])
    pad = len(s2) - len(s1)
    ids = torch.tensor([[0] * pad + s1, s2])
    mask = (torch.arange(len(s2))[None] >= torch.tensor([[pad], [0]])).long()
    with torch.no_grad():
        batch = model(ids, px, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        alone = [model(torch.tensor([s]), px[i:i + 1], logits_to_keep=1).logits[0, -1] for i, s in enumerate((s1, s2))]
    torch.testing.assert_close(batch, torch.stack(alone), atol=1e-5, rtol=1e-5)


def test_config_checks_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="turn_start_id"):
        VLMConfig(attention="turn")
    with pytest.raises(ValueError, match="attention must be one of"):
        VLMConfig(attention="bidirectional")
    from minimind_v.data.tokenizer import train_tokenizer

    tok = train_tokenizer(["a red circle", "a blue square"] * 20, vocab_size=280)
    model = tiny("turn")
    save_run(model, tok, tmp_path / "run")
    loaded, _ = load_run(tmp_path / "run")
    assert (loaded.cfg.attention, loaded.cfg.turn_start_id) == ("turn", START)


@pytest.mark.slow
def test_quickstart_trains_and_answers_with_turn_attention(tmp_path, capsys):
    from minimind_v import cli
    from minimind_v.infer.api import VLMChat
    from minimind_v.data import world
    import random

    assert cli.main(["quickstart", "--preset", "smoke", "--attention", "turn", "--no-eval",
                     "--out", str(tmp_path / "run")]) == 0
    model, tok = load_run(tmp_path / "run")
    assert (model.cfg.attention, model.cfg.turn_start_id) == ("turn", tok.convert_tokens_to_ids("<|im_start|>"))
    image = world.render(world.sample_scene(random.Random(0)), size=48)
    answer = VLMChat(model, tok).answer([image], "<image>\nWhat color is the circle?", max_new_tokens=4)
    assert isinstance(answer, str)
