"""Grounding: which image tokens an answer should look at, and the loss that teaches one head to look there."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from minimind_v.config import LLMConfig
from minimind_v.data.batches import PackCollate, PadCollate
from minimind_v.data.chat import IGNORE_INDEX
from minimind_v.data.chatmix import make_sample
from minimind_v.data.grounding import NOWHERE, answer_targets, question_objects
from minimind_v.data.world import Obj, Scene
from minimind_v.data.world_text import ask, ask_two, make_qa
from minimind_v.model import llm as llm_module
from minimind_v.model.llm import MiniMindLM
from minimind_v.train.grounding import grounding_loss, head_attention, layer_input
from minimind_v.train.trainer import LossModule


def obj(shape: str, color: str, row: int, col: int, size: str = "small") -> Obj:
    return Obj(shape, color, size, row, col, cx=col / 3 + 1 / 6, cy=row / 3 + 1 / 6, side=0.15)


SCENE = Scene((obj("circle", "red", 0, 0), obj("square", "red", 1, 2), obj("circle", "blue", 2, 1)))


def test_each_binding_kind_points_at_the_objects_it_names():
    assert question_objects(make_qa("color", "red", (SCENE,), shape="square")) == [(0, 5)]
    assert question_objects(make_qa("shape", "circle", (SCENE,), color="blue")) == [(0, 7)]
    # a count also looks at "nowhere", so that the share left there says how many (and 0 is all of it)
    assert question_objects(make_qa("count_color", "2", (SCENE,), color="red", what="red shape")) == \
        [(0, 0), (0, 5), NOWHERE]
    assert question_objects(make_qa("count_color", "0", (SCENE,), color="green", what="green shape")) == [NOWHERE]
    for kind, key in (("position", "center right"), ("size", "small"), ("exists", "yes")):
        assert question_objects(make_qa(kind, key, (SCENE,), color="blue", shape="circle")) == [(0, 7)], kind
    other = Scene((obj("circle", "blue", 0, 1), obj("cross", "green", 2, 2)))
    assert question_objects(make_qa("both_have", "yes", (SCENE, other), color="blue", shape="circle",
                                    only="")) == [(0, 7), (1, 1)]
    assert question_objects(make_qa("which_has", "first", (SCENE, other), color="red", shape="square")) == [(0, 5)]


def test_missing_objects_point_nowhere_and_general_questions_point_at_nothing():
    rng = random.Random(0)
    assert question_objects(ask("exists", SCENE, rng, want="no")) == [NOWHERE]
    assert question_objects(make_qa("absent", "cross", (SCENE,), ask="color", shape="cross")) == [NOWHERE]
    other = Scene((obj("cross", "green", 2, 2),))
    assert question_objects(make_qa("both_have", "no", (SCENE, other), color="green", shape="square",
                                    only="")) == [NOWHERE]
    assert question_objects(ask("count", SCENE, rng)) == []  # about everything, or about no object at all
    assert question_objects(ask("caption", SCENE, rng)) == []
    assert question_objects(ask_two("compare_count", SCENE, other, rng)) == []


def _sample(tokens_per_image: int, answers: list[int], images: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ids: [bos, images..., 7, (answer run, 8)...] with image token 3; labels on the answer runs."""
    ids, labels = [1], [IGNORE_INDEX]
    for _ in range(images):
        ids += [3] * tokens_per_image + [7]
        labels += [IGNORE_INDEX] * (tokens_per_image + 1)
    for n in answers:
        ids += [20 + i for i in range(n)] + [8, 9]
        labels += [20 + i for i in range(n)] + [IGNORE_INDEX, IGNORE_INDEX]
    return torch.tensor(ids), torch.tensor(labels)


def test_answer_positions_pair_with_the_cells_image_token():
    ids, labels = _sample(9, answers=[2, 3])  # images at 1..9, answer 0 at 11..12, answer 1 at 15..17
    pairs = answer_targets(ids, labels, [(1, 0, 4)], image_token_id=3, tokens_per_image=9).tolist()
    # positions 14, 15, 16 predict the answer's three tokens; cell 4 (the centre) is the fifth image token
    assert pairs == [[14, 5], [15, 5], [16, 5]]
    assert ids[5] == 3 and all(labels[q + 1] != IGNORE_INDEX for q, _ in pairs)


def test_finer_grids_cover_a_cell_with_several_tokens_and_a_second_image_is_found():
    ids, labels = _sample(36, answers=[1], images=2)  # 6 x 6 tokens: a cell is 2 x 2 of them
    pairs = answer_targets(ids, labels, [(0, 1, 8)], image_token_id=3, tokens_per_image=36).tolist()
    second = 1 + 37  # the second image's first token
    assert sorted(k for _, k in pairs) == [second + r * 6 + c for r in (4, 5) for c in (4, 5)]


def test_nowhere_is_the_samples_first_token():
    ids, labels = _sample(9, answers=[1])
    assert answer_targets(ids, labels, [(0, *NOWHERE)], 3, 9).tolist() == [[10, 0]]


def test_cut_turns_are_skipped_and_odd_grids_refused():
    ids, labels = _sample(9, answers=[2])
    assert answer_targets(ids, labels, [(3, 0, 0), (0, 1, 0)], 3, 9).shape == (0, 2)
    with pytest.raises(ValueError, match="square token grid"):
        answer_targets(ids, labels, [(0, 0, 0)], 3, 10)


def _dialogues(tiny_run, n: int, seed: int):
    """The tiny run and n encoded dialogues of the mix that fit its 256 positions (its tokenizer is tiny)."""
    from minimind_v.data.chat import SampleTooLong
    from minimind_v.data.encode import SampleEncoder
    from minimind_v.model.checkpoint import load_run

    model, tok = load_run(tiny_run)
    enc = SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, max_len=256)
    rng, samples = random.Random(seed), []
    while len(samples) < n:
        try:
            samples.append(enc(make_sample(rng, image_size=32, kinds="dialogue")))
        except SampleTooLong:
            continue
    return model, samples


def test_the_mix_carries_grounding_and_batches_keep_it_on_the_right_tokens(tiny_run):
    model, samples = _dialogues(tiny_run, 12, seed=1)
    grounded = [s for s in samples if "ground" in s]
    assert grounded, "no dialogue in 12 asked a binding question"
    image_id = model.cfg.image_token_id
    for collate in (PadCollate(), PackCollate(max_len=256)):
        batch = collate(samples)
        rows, q, k = batch["ground"].unbind(1)
        assert len(rows) == sum(len(s["ground"]) for s in grounded)
        docs = batch.get("doc_ids", torch.zeros_like(batch["input_ids"]))
        first = (k == 0) | (docs[rows, k] != docs[rows, (k - 1).clamp(min=0)])  # a sample's first token: nowhere
        assert ((batch["input_ids"][rows, k] == image_id) | first).all()
        assert (batch["input_ids"][rows, k] == image_id).any() and first.any()
        assert (batch["labels"][rows, q + 1] != IGNORE_INDEX).all()
        assert (docs[rows, q] == docs[rows, k]).all()


def _attention_probs(model: MiniMindLM, layer: int, ids: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
    """Every head's attention probabilities [B, H, T, T] in `layer`, from the q and k that reach SDPA."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def record(q, k, v, **kw):
        seen.append((q, k, kw.get("attn_mask")))
        return sdpa(q, k, v, **kw)

    llm_module.F.scaled_dot_product_attention = record
    try:
        model(ids, doc_ids=doc_ids)
    finally:
        llm_module.F.scaled_dot_product_attention = sdpa
    q, k, mask = seen[layer]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    T = ids.shape[1]
    allowed = torch.ones(T, T, dtype=torch.bool).tril() if mask is None else mask
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


@pytest.mark.parametrize("head", [1, 3])
@pytest.mark.parametrize("packed", [False, True])
def test_the_loss_is_minus_log_the_heads_attention_on_the_targets(head, packed):
    torch.manual_seed(0)
    model = MiniMindLM(LLMConfig(dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=50,
                                 max_seq_len=64, qk_norm=True)).eval()
    ids = torch.randint(0, 50, (2, 20))
    doc_ids = torch.tensor([[0] * 8 + [1] * 12, [0] * 20]) if packed else None
    ground = torch.tensor([[0, 14, 9], [0, 14, 11], [1, 5, 2], [1, 19, 0]])  # query 14 has two targets
    with torch.no_grad(), layer_input(model.layers[1].attn) as seen:
        model(ids, doc_ids=doc_ids)
        loss = grounding_loss(model.layers[1].attn, seen, ground, doc_ids, heads=(head,))
        both = grounding_loss(model.layers[1].attn, seen, ground, doc_ids, heads=(head, 0))
        probs = _attention_probs(model, 1, ids, doc_ids)

    def expected(p):  # query 14's two targets share its weight equally
        return -torch.stack([(p[0, 14, 9].log() + p[0, 14, 11].log()) / 2, p[1, 5, 2].log(), p[1, 19, 0].log()]).mean()

    torch.testing.assert_close(loss, expected(probs[:, head]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both, (expected(probs[:, head]) + expected(probs[:, 0])) / 2, atol=1e-5, rtol=1e-5)
    assert not model.layers[1].attn._forward_pre_hooks  # the hook is gone once the block ends


@pytest.mark.parametrize("head", [0, 3])
def test_a_probe_reads_the_same_attention_the_model_computes(head):
    """head_attention (benchmarks/grounding_probe.py) is one row of the attention SDPA computed."""
    torch.manual_seed(1)
    model = MiniMindLM(LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=50,
                                 max_seq_len=64, qk_norm=True)).eval()
    ids = torch.randint(0, 50, (2, 16))
    with torch.no_grad(), layer_input(model.layers[1].attn) as seen:
        model(ids)
        got = head_attention(model.layers[1].attn, seen, 1, 9, head)
    want = _attention_probs(model, 1, ids, None)[1, head, 9, :10]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_training_with_grounding_teaches_the_head_to_look(tiny_run):
    model, samples = _dialogues(tiny_run, 8, seed=2)
    batch = PadCollate()(samples)
    assert "ground" in batch
    model.train()
    plain, grounded = LossModule(model), LossModule(model, ground_weight=1.0)
    assert float(plain(batch)[2]) == 0.0  # off by default: no auxiliary loss
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        loss_sum, n, aux = grounded(batch)
        first = float(aux.detach()) if first is None else first
        (loss_sum / n + aux).backward()
        opt.step()
        opt.zero_grad()
    assert float(aux.detach()) < 0.3 * first, (first, float(aux.detach()))
