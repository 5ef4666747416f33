"""The shapes world follows its contract: scenes, pixels, questions, balance, digits and the training mix."""
import math
import random
import re
import time

import numpy as np
import pytest

from minimind_v.data import chatmix, digits
from minimind_v.data.chatmix import IMAGE, MixWeights, eval_items, make_sample
from minimind_v.data.digits import digit_qa, load_digit_split, render_digit
from minimind_v.data.world import Obj, Scene, eval_seed, render, sample_scene, sample_scene_pair, train_seed
from minimind_v.data.world_text import (QUESTIONS, ask, ask_two, caption, canonical_questions, paraphrase,
                                        two_image_questions)
from minimind_v.data.world_vocab import COLORS, POSITIONS, SHAPES, SIZES
from minimind_v.eval.score import score


def scenes(n, seed=0):
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_same_seed_same_scene_image_and_text():
    def draw(seed):
        rng = random.Random(seed)
        s = sample_scene(rng)
        qas = canonical_questions(s, rng)
        return (s, render(s, 64, rng, jitter=True).tobytes(), render(s, 64, noise=5.0).tobytes(),
                [(q.question, q.answer, q.key) for q in qas], [paraphrase(q, rng).answer for q in qas],
                caption(s, rng))
    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    assert [make_sample(random.Random(3))["conversations"] for _ in range(2)][0] == \
        make_sample(random.Random(3))["conversations"]


def test_train_and_eval_seeds_are_disjoint():
    train = {train_seed(i) for i in range(100_000)}
    held_out = {eval_seed(i) for i in range(100_000)}
    assert not train & held_out and len(train) == len(held_out) == 100_000
    with pytest.raises(ValueError):
        eval_seed(-1)


def check_rules(s):
    objs = s.objects
    assert 1 <= len(objs) <= 4
    assert len({(o.row, o.col) for o in objs}) == len(objs)  # one object per cell
    assert len({o.pair for o in objs}) == len(objs)  # no two share colour and shape
    for o in objs:
        assert o.shape in SHAPES and o.color in COLORS and o.position == POSITIONS[(o.row, o.col)]
        lo, hi = SIZES[o.size]
        assert lo <= o.side <= hi
        # centre in the middle half of its cell
        assert o.col / 3 + 1 / 12 <= o.cx <= o.col / 3 + 3 / 12
        assert o.row / 3 + 1 / 12 <= o.cy <= o.row / 3 + 3 / 12
        x0, y0, x1, y1 = o.box
        assert 0 <= x0 and 0 <= y0 and x1 <= 1 and y1 <= 1  # wholly on the canvas
    for i, a in enumerate(objs):
        for b in objs[i + 1:]:
            ax0, ay0, ax1, ay1 = a.box
            bx0, by0, bx1, by1 = b.box
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0  # boxes, hence shapes, disjoint


def test_every_scene_rule_on_many_scenes():
    many = scenes(2000)
    for s in many:
        check_rules(s)
    assert {len(s.objects) for s in many} == {1, 2, 3, 4}
    assert {o.size for s in many for o in s.objects} == set(SIZES)
    rng = random.Random(1)
    for _ in range(1000):
        a, b = sample_scene_pair(rng, share=True)
        check_rules(a)
        check_rules(b)
        assert a.pairs & b.pairs
    with pytest.raises(ValueError, match="1 to 4"):
        sample_scene(random.Random(0), n_objects=5)


def nearest_color(rgb):
    return min(COLORS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLORS[c], rgb)))


@pytest.mark.parametrize("size,antialias", [(96, True), (96, False), (48, True), (48, False)])
def test_pixel_at_each_object_centre_has_its_colour(size, antialias):
    for s in scenes(150, seed=size + antialias):
        px = np.asarray(render(s, size, antialias=antialias, background=230)).astype(int)
        covered = np.zeros((size, size), bool)
        for o in s.objects:
            got = px[int(o.cy * size), int(o.cx * size)]
            assert np.abs(got - COLORS[o.color]).max() <= 1, (o, got)
            x0, y0, x1, y1 = (math.floor(v * size) - 1 for v in o.box)
            covered[max(y0, 0):y1 + 3, max(x0, 0):x1 + 3] = True
        assert (px[~covered] == 230).all()  # outside every object: the plain background


def test_jittered_render_stays_within_the_contract():
    rng = random.Random(1)
    for s in scenes(200, seed=5):
        img = np.asarray(render(s, 96, rng, jitter=True)).astype(float)
        corners = img[[0, 0, -1, -1], [0, -1, 0, -1]]  # the GAP keeps every object off the corners
        assert corners.min() >= 200 - 30 and corners.max() <= 255
        assert np.abs(corners - corners.mean(axis=1, keepdims=True)).max() <= 30  # grey, up to noise
        for o in s.objects:
            r, c = int(o.cy * 96), int(o.cx * 96)
            assert nearest_color(img[r - 1:r + 2, c - 1:c + 2].mean(axis=(0, 1))) == o.color


AREA = {"circle": math.pi / 4, "square": 1.0, "triangle": math.sqrt(3) / 4, "diamond": 0.5, "cross": 5 / 9}


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_geometry_size_and_area(shape):
    S = 480
    for size, side in (("small", 0.15), ("large", 0.27)):
        o = Obj(shape, "blue", size, 1, 1, 0.5, 0.5, side)
        mask = (np.asarray(render(Scene((o,)), S, antialias=False)) != 240).any(axis=2)
        rows, cols = np.nonzero(mask)
        height = side * (math.sqrt(3) / 2 if shape == "triangle" else 1.0)
        assert abs(cols.max() - cols.min() + 1 - side * S) <= 2  # box side = the size
        assert abs(rows.max() - rows.min() + 1 - height * S) <= 2
        assert abs(mask.sum() / (AREA[shape] * (side * S) ** 2) - 1) < 0.025  # pixel quantisation of ~130 px shapes
        if shape == "cross":  # arms one third of the size thick
            arm = mask[int((0.5 + 0.4 * side) * S)].sum()
            assert abs(arm - side * S / 3) <= 2
        if shape == "triangle":  # pointing up: narrow top, base as wide as the box
            assert mask[rows.min() + 1].sum() < 6 and abs(mask[rows.max()].sum() - side * S) <= 3


def test_objects_do_not_overlap_in_pixels():
    for s in scenes(100, seed=9):
        masks = [(np.asarray(render(Scene((o,)), 96)) != 240).any(axis=2) for o in s.objects]
        assert (np.sum(masks, axis=0) <= 1).all()


def test_questions_only_when_the_contract_asks_them():
    rng = random.Random(0)
    for s in scenes(800, seed=11):
        shapes = [o.shape for o in s.objects]
        colors = [o.color for o in s.objects]
        by_pair = {o.pair: o for o in s.objects}
        kinds = {}
        for qa in canonical_questions(s, rng):
            kinds[qa.kind] = qa
            assert qa.question == QUESTIONS[qa.kind][0].format(**qa.slots) and not qa.question.startswith("<")
            if qa.kind == "color":
                assert shapes.count(qa.slots["shape"]) == 1 and by_pair[(qa.key, qa.slots["shape"])]
            elif qa.kind == "shape":
                assert colors.count(qa.slots["color"]) == 1 and (qa.slots["color"], qa.key) in by_pair
            elif qa.kind == "count":
                assert qa.key == str(len(s.objects))
            elif qa.kind == "count_color":
                assert qa.key == str(colors.count(qa.slots["color"])) and 0 <= int(qa.key) <= 4
            elif qa.kind == "exists":
                assert qa.key == ("yes" if (qa.slots["color"], qa.slots["shape"]) in by_pair else "no")
            elif qa.kind in ("position", "size"):
                o = by_pair[(qa.slots["color"], qa.slots["shape"])]
                assert qa.key == (o.position if qa.kind == "position" else o.size)
            elif qa.kind == "caption":
                assert qa.key == qa.answer == caption(s)
        assert ("color" in kinds) == any(shapes.count(x) == 1 for x in shapes)
        assert ("shape" in kinds) == any(colors.count(x) == 1 for x in colors)
        assert {"count", "count_color", "exists", "position", "size", "caption"} <= set(kinds)
    for _ in range(800):
        a, b = sample_scene_pair(rng, share=rng.random() < 0.5)
        for qa in two_image_questions(a, b, rng):
            pair = (qa.slots.get("color"), qa.slots.get("shape"))
            if qa.kind == "compare_count":
                na, nb = len(a.objects), len(b.objects)
                assert na != nb and qa.key == ("first" if na > nb else "second")
            elif qa.kind == "which_has":
                assert (pair in a.pairs) != (pair in b.pairs)
                assert qa.key == ("first" if pair in a.pairs else "second")
            else:
                assert qa.key == ("yes" if pair in a.pairs and pair in b.pairs else "no")
        if len(a.objects) == len(b.objects):
            assert ask_two("compare_count", a, b, rng) is None


def test_articles_and_canonical_caption():
    s = Scene((Obj("circle", "red", "large", 0, 0, 0.2, 0.2, 0.25),
               Obj("square", "blue", "small", 1, 1, 0.5, 0.5, 0.15),
               Obj("cross", "green", "small", 2, 1, 0.5, 0.8, 0.15)))
    want = ("A large red circle at the top left, a small blue square in the center"
            " and a small green cross at the bottom.")
    assert caption(s) == want and score("caption", want, caption(s)) == 1.0
    orange = Scene((Obj("square", "orange", "small", 1, 1, 0.5, 0.5, 0.15),))
    rng = random.Random(0)
    assert ask("exists", orange, rng, "yes").question == "Is there an orange square?"
    assert ask("exists", orange, rng, "yes").answer == "Yes, there is an orange square."
    assert ask("count_color", s, rng).answer in ("There is 1 red shape.", "There is 1 blue shape.",
                                                 "There is 1 green shape.", "There are no orange shapes.",
                                                 "There are no yellow shapes.", "There are no purple shapes.")


def test_yes_and_no_equally_often():
    rng = random.Random(0)
    exists = [ask("exists", s, rng).key for s in scenes(4000, seed=2)]
    both = [ask_two("both_have", *sample_scene_pair(rng), rng).key for _ in range(4000)]
    for keys in (exists, both):
        assert abs(keys.count("yes") / len(keys) - 0.5) < 0.03
    which = [qa.key for _ in range(2000) for qa in two_image_questions(*sample_scene_pair(rng), rng)
             if qa.kind == "which_has"]
    assert abs(which.count("first") / len(which) - 0.5) < 0.05


def test_every_generated_answer_scores_full_marks():
    rng = random.Random(4)
    for s in scenes(300, seed=4):
        a, b = sample_scene_pair(rng)
        for qa in canonical_questions(s, rng) + two_image_questions(a, b, rng):
            assert score(qa.kind, qa.answer, qa.key) == 1.0, qa
            for _ in range(6):
                p = paraphrase(qa, rng)
                assert p.key == qa.key and score(p.kind, p.answer, p.key) == 1.0, p
    for label in range(10):
        assert score("digit", digit_qa(label).answer, str(label)) == 1.0
        for _ in range(10):
            qa = digit_qa(label, rng)
            assert score("digit", qa.answer, qa.key) == 1.0, qa


def test_digit_split_and_rendering():
    from sklearn.datasets import load_digits
    every = load_digits()
    tr_x, tr_y = load_digit_split("train")
    ev_x, ev_y = load_digit_split("eval")
    assert (len(tr_y), len(ev_y)) == (1437, 360) and tr_x.shape[1:] == (8, 8)
    idx = np.arange(len(every.target))
    assert (ev_x == every.images[idx % 5 == 0]).all() and (ev_y == every.target[idx % 5 == 0]).all()
    assert (tr_x == every.images[idx % 5 != 0]).all() and (tr_y == every.target[idx % 5 != 0]).all()
    px = np.zeros((8, 8), int)
    px[0, 0], px[7, 7], px[3, 4] = 16, 8, 4
    img = np.asarray(render_digit(px, 96))
    assert img.shape == (96, 96, 3)
    assert (img[:12, :12] == 0).all() and (img[84:, 84:] == 128).all() and (img[36:48, 48:60] == 191).all()
    assert (img[12:24, :12] == 255).all()
    with pytest.raises(ValueError, match="8 x 8"):
        render_digit(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="split"):
        load_digit_split("test")


CANONICAL = [re.escape(QUESTIONS[k][0]).replace(r"\{", "{").replace(r"\}", "}") for k in QUESTIONS]
CANONICAL = [re.sub(r"\{[a-z_]+\}", "[a-z ]+", p) for p in CANONICAL]


def test_training_mix_format(monkeypatch):
    splits = []
    real = digits.load_digit_split
    monkeypatch.setattr(chatmix, "load_digit_split", lambda split: splits.append(split) or real(split))
    rng = random.Random(0)
    canonical = total = 0
    seen = set()
    for _ in range(600):
        s = make_sample(rng, image_size=64)
        conv, images = s["conversations"], s["images"]
        assert [m["role"] for m in conv] == ["user", "assistant"] * (len(conv) // 2) and len(conv) >= 2
        assert all(img.size == (64, 64) and img.mode == "RGB" for img in images)
        n = len(images)
        assert conv[0]["content"].startswith(IMAGE * n) and not conv[0]["content"][len(IMAGE) * n:].startswith("<")
        assert sum(m["content"].count("<image>") for m in conv) == n  # markers only in the first user turn
        seen.add(n)
        if n == 1 and len(conv) > 2:  # a dialogue about one image: 1..6 turns
            assert len(conv) <= 12
            for m in conv[::2]:
                total += 1
                canonical += any(re.fullmatch(p, m["content"].removeprefix(IMAGE)) for p in CANONICAL)
    assert seen == {0, 1, 2, 3, 4, 5} and set(splits) == {"train"}  # 3..5: the frames of a motion clip
    assert canonical / total > 0.6
    cap = make_sample(rng, kinds="caption")
    assert len(cap["images"]) == 1 and len(cap["conversations"]) == 2
    only_text = make_sample(rng, kinds="sft", mix=MixWeights(dialogue=0, two_image=0, digit=0, caption=0))
    assert only_text["images"] == [] and "<image>" not in str(only_text["conversations"])
    for _ in range(500):
        text = make_sample(rng, kinds="text")
        assert text["images"] == [] and "<image>" not in str(text["conversations"])
    with pytest.raises(ValueError, match="unknown kinds"):
        make_sample(rng, kinds="video")


def test_training_scenes_come_from_train_seeds_only(monkeypatch):
    used = []
    monkeypatch.setattr(chatmix, "train_seed", lambda i: used.append(i) or train_seed(i))
    monkeypatch.setattr(chatmix, "eval_seed", lambda i: pytest.fail("make_sample asked for an eval seed"))
    rng = random.Random(0)
    for kinds in ("caption", "dialogue", "two_image"):
        before = len(used)
        make_sample(rng, kinds=kinds)
        assert len(used) == before + 1


def test_make_sample_is_fast():
    rng = random.Random(0)
    make_sample(rng)  # loads the digits once
    t = time.perf_counter()
    for _ in range(300):
        make_sample(rng, image_size=96)
    per_call = (time.perf_counter() - t) / 300
    assert per_call < 0.005, f"make_sample takes {per_call * 1e3:.2f} ms"


def test_eval_items_held_out_balanced_and_deterministic():
    items = eval_items(8, seed=0, image_size=48)
    again = eval_items(8, seed=0, image_size=48)
    assert [(i["question"], i["key"]) for i in items] == [(i["question"], i["key"]) for i in again]
    assert all(a["images"][0].tobytes() == b["images"][0].tobytes() for a, b in zip(items, again))
    kinds, unseen = {}, {}
    for it in items:
        (kinds if it["wording"] == "canonical" else unseen).setdefault(it["kind"], []).append(it["key"])
        assert it["question"].count("<image>") == len(it["images"]) and it["question"].startswith(IMAGE)
        assert score(it["kind"], it["answer"], it["key"]) == 1.0
    assert len(kinds["digit"]) == 360 and all(len(v) == 8 for k, v in kinds.items() if k != "digit")
    assert set(kinds) == {"color", "shape", "count", "count_color", "exists", "position", "size", "caption",
                          "compare_count", "which_has", "both_have", "digit", "absent", "motion"}
    assert unseen == kinds | {"digit": unseen["digit"]} and len(unseen["digit"]) == 8  # same scenes, same keys
    for kind in ("exists", "both_have"):
        assert kinds[kind].count("yes") == kinds[kind].count("no") == 4
    for kind in ("which_has", "compare_count"):
        assert kinds[kind].count("first") == kinds[kind].count("second") == 4
    assert [i["question"] for i in eval_items(8, seed=1, image_size=48)] != [i["question"] for i in items]


def test_follow_up_share_sets_how_many_dialogues_go_on():
    rng = random.Random(3)
    lengths = {w: [len(make_sample(rng, image_size=32, kinds="dialogue", mix=MixWeights(follow_up=w))["conversations"])
                   for _ in range(300)] for w in (0.0, 0.25, 1.0)}
    assert set(lengths[0.0]) == {2}  # one question each: the image's own turn
    longer = {w: sum(n > 2 for n in v) / len(v) for w, v in lengths.items()}
    assert 0.12 < longer[0.25] < 0.35 and longer[1.0] > 0.7, longer
