"""Wordings: many per kind, the contract's exact strings always trained, a held-out share that never reaches
training; the balanced draws behind the evaluation; the quickstart's training seed."""
import random
import re
from collections import Counter

import pytest

from minimind_v.data import wording
from minimind_v.data.balanced import CYCLES, absent_qa, balanced_qa
from minimind_v.data.chatmix import DIALOGUE_CHARS, IMAGE, eval_items, make_sample
from minimind_v.data.world import sample_scene
from minimind_v.data.world_vocab import COLORS, SHAPES
from minimind_v.eval.score import score

# The contract's exact questions (SHAPES_WORLD.md), written out here rather than read from the generator.
CONTRACT = {"color": "What color is the {shape}?", "shape": "What shape is the {color} object?",
            "count": "How many shapes are there?", "count_color": "How many {color} shapes are there?",
            "exists": "Is there {a_obj}?", "position": "Where is the {obj}?", "size": "Is the {obj} small or large?",
            "caption": "Describe the image.", "compare_count": "Which image has more shapes?",
            "which_has": "Which image contains {a_obj}?", "both_have": "Do both images contain {a_obj}?",
            "digit": "What digit is this?"}


@pytest.mark.parametrize("kind", wording.KINDS)
def test_many_templates_a_fifth_held_out_canonical_always_trained(kind):
    every, train, held = wording.templates(kind), wording.train_templates(kind), wording.held_out_templates(kind)
    assert every[0] == CONTRACT[kind] and CONTRACT[kind] in train and not wording.held_out(kind, CONTRACT[kind])
    assert len(every) >= 200 and len({wording.normalise(t) for t in every}) == len(every)
    assert set(train).isdisjoint(held) and len(train) + len(held) == len(every)
    assert 0.1 <= len(held) / len(every) <= 0.3, len(held) / len(every)
    cores = {c for _, c in wording._entries(kind)}
    assert 0.15 <= len(wording.held_out_cores(kind)) / len(cores) <= 0.25
    for t in every:  # every template fills in with the kind's slots and reads as a sentence
        text = t.format(shape="circle", color="red", obj="red circle", a_obj="a red circle")
        assert "{" not in text and "[" not in text and "  " not in text and text[-1] in "?.", t


def test_grammar_and_noise():
    assert wording.expand("a [b|c [d|e]|] f?") == ["a b f?", "a c d f?", "a c e f?", "a f?"]
    with pytest.raises(ValueError, match="unclosed"):
        wording.expand("a [b|c")
    rng = random.Random(0)
    base = "Could you please tell me the number of red circles in this picture?"
    noisy = [wording.roughen(base, rng, p=1.0) for _ in range(200)]
    for text in noisy:
        assert text == text.lower() and not text.endswith("?")
        assert {"red", "number"} <= set(text.split())  # slot and question words are never misspelt
    assert len(set(noisy)) > 20
    with pytest.raises(ValueError, match="split"):
        wording.question("count", {}, rng, "test")
    with pytest.raises(ValueError, match="unknown question kind"):
        wording.templates("colour")


def test_generator_is_deterministic():
    def draw(seed):
        rng = random.Random(seed)
        return [wording.question(k, {"shape": "cross", "color": "blue", "obj": "blue cross",
                                     "a_obj": "a blue cross"}, rng, split) for k in wording.KINDS
                for split in ("train", "held_out") for _ in range(5)]
    assert draw(1) == draw(1) and draw(1) != draw(2)
    assert [make_sample(random.Random(5))["conversations"] for _ in range(2)][0] == \
        make_sample(random.Random(5))["conversations"]


_PAIR = re.compile(rf"\b(?:(a|an) )?({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")


def _deslot(text: str) -> str:
    """A question with its slot values turned back into slots, normalised: the template it was made from."""
    text = _PAIR.sub(lambda m: "{a_obj}" if m.group(1) else "{obj}", wording.normalise(text))
    text = re.sub(rf"\b({'|'.join(COLORS)})\b", "{color}", text)
    return re.sub(rf"\b({'|'.join(SHAPES)})\b", "{shape}", text)


def test_held_out_wordings_never_reach_training(monkeypatch):
    status = {}
    for kind in wording.KINDS:
        for t in wording.templates(kind):
            status.setdefault(wording.normalise(t), set()).add(wording.held_out(kind, t))
    assert not [t for t, s in status.items() if len(s) > 1]  # no wording is trained in one kind, held in another
    # the training path never even asks for the held-out pool
    monkeypatch.setattr(wording, "held_out_templates", lambda kind: pytest.fail("training read held-out wordings"))
    rng = random.Random(0)
    asked = Counter()
    for _ in range(3000):
        sample = make_sample(rng, image_size=32)
        if sample["images"]:
            for m in sample["conversations"][::2]:
                found = status.get(_deslot(m["content"].removeprefix(IMAGE * len(sample["images"]))))
                asked["unmatched" if found is None else "held out" if True in found else "trained"] += 1
                asked[m["content"]] += 1
    assert asked["held out"] == 0
    assert asked["trained"] > 0.85 * (asked["trained"] + asked["unmatched"])  # the rest carry a typo
    for kind in ("count", "caption", "compare_count", "digit"):  # the slot-free exact strings are trained as such
        assert asked[IMAGE * (2 if kind == "compare_count" else 1) + CONTRACT[kind]] > 20


def test_training_sees_the_rare_answers_and_bad_input():
    rng = random.Random(1)
    keys = Counter()
    for _ in range(2500):
        conv = make_sample(rng, image_size=32, kinds="dialogue")["conversations"]
        text = sum(len(m["content"].removeprefix(IMAGE)) for m in conv)
        assert len(conv) == 2 or text <= DIALOGUE_CHARS  # long wordings never outgrow a packed row
        for m in conv[1::2]:
            a = m["content"]
            keys["count_color 4"] += bool(re.fullmatch(r"There are (4|four) [a-z]+ shapes\.", a))
            keys["count_color 3"] += bool(re.fullmatch(r"There are (3|three) [a-z]+ shapes\.", a))
            keys["absent"] += a.startswith(("There is no", "I do not see", "I can't find", "The image has no"))
    assert keys["count_color 3"] >= 15 and keys["count_color 4"] >= 10 and keys["absent"] >= 60, keys


def test_eval_draws_every_answer_alike():
    items = eval_items(40, seed=2, image_size=32, unseen=False)
    by_kind = {}
    for it in items:
        by_kind.setdefault(it["kind"], Counter())[it["key"]] += 1
    expect = {"count": {"1", "2", "3", "4"}, "count_color": {"0", "1", "2", "3", "4"}, "color": set(COLORS),
              "shape": set(SHAPES), "size": {"small", "large"}, "exists": {"yes", "no"}, "both_have": {"yes", "no"},
              "which_has": {"first", "second"}, "compare_count": {"first", "second"},
              "position": {"top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
                           "bottom right"}}
    for kind, keys in expect.items():
        counts = by_kind[kind]
        assert set(counts) == keys and max(counts.values()) - min(counts.values()) <= 1, (kind, counts)
    assert sum(by_kind["absent"].values()) == 40


def test_balanced_draws_follow_the_contract_and_make_near_misses():
    rng = random.Random(3)
    for kind, cycle in CYCLES.items():
        for want in cycle * 6:
            qa = balanced_qa(kind, rng, want)
            for s in qa.scenes:
                assert 1 <= len(s.objects) <= 4 and len(s.pairs) == len(s.objects)
                assert len({(o.row, o.col) for o in s.objects}) == len(s.objects)
            if kind == "absent":
                assert score("absent", qa.answer, qa.key) == 1.0
                if want.endswith("near"):
                    pair = (qa.slots["color"], qa.slots["shape"])
                    s = qa.scenes[0]
                    assert pair not in s.pairs and any(o.color == pair[0] or o.shape == pair[1] for o in s.objects)
                continue
            assert score(kind, qa.answer, qa.key) == 1.0
            pair = (qa.slots.get("color"), qa.slots.get("shape"))
            if want == "no:near":
                assert all(pair not in s.pairs for s in qa.scenes)
                assert any(o.color == pair[0] or o.shape == pair[1] for s in qa.scenes for o in s.objects)
            if want == "no:far":
                assert all(o.color != pair[0] and o.shape != pair[1] for s in qa.scenes for o in s.objects)
            if want == "no:one":
                assert (pair in qa.scenes[0].pairs) != (pair in qa.scenes[1].pairs)
    with pytest.raises(ValueError, match="not an answer"):
        balanced_qa("count", rng, "5")
    with pytest.raises(ValueError, match="unknown absent"):
        absent_qa(sample_scene(rng), "count", rng)


def test_quickstart_seed_reaches_the_run_and_moves_its_scenes(monkeypatch, capsys):
    from minimind_v.cli import main
    from minimind_v import quickstart
    from minimind_v.quickstart import stage_offset

    got = {}
    monkeypatch.setattr(quickstart, "run_quickstart", lambda out, qs, **kw: got.update(seed=qs.seed))
    assert main(["quickstart", "--preset", "smoke", "--seed", "2", "--out", "unused"]) == 0 and got["seed"] == 2
    assert main(["quickstart", "--seed", "-1"]) != 0 and "--seed must be >= 0" in capsys.readouterr().err
    starts = {stage_offset(seed, stage) for seed in range(3) for stage in range(2)}
    assert len(starts) == 6 and min(abs(a - b) for a in starts for b in starts if a != b) >= 100_000_000
