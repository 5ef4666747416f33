"""The training mix as conversations, drawn on the fly, and the held-out evaluation set.

A sample is {"conversations": [{"role": "user"|"assistant", "content": str}, ...], "images": [PIL, ...]}, the
reference's JSON-lines format with the images inline; every "<image>" marker stands for one image, in order.
Training scenes always come from `train_seed` and evaluation scenes from `eval_seed`, whatever rng the caller
passes in, so no evaluation scene is ever trained on. Digits: training uses the train split only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, fields

from ..config import IMAGE_MARKER
from .balanced import CYCLES, absent_qa, balanced_qa
from .digits import digit_qa, load_digit_split, render_digit
from .grounding import question_objects
from .motion import DIRECTIONS, TRAIN_FRAMES, motion_answer, motion_question, render_clip, sample_clip
from .wording import question as worded
from .world import EVAL_KIND_SEED_BLOCK, eval_seed, render, sample_scene, sample_scene_pair, train_seed
from .world_text import (QA, SINGLE_KINDS, TWO_IMAGE_KINDS, article, ask, caption, canonical_questions, paraphrase,
                         two_image_questions)
from .world_vocab import SHAPES

IMAGE = IMAGE_MARKER + "\n"  # an image at the start of a user turn
CAPTION_REQUEST = "Describe the image."  # the contract's; other requests come from `wording.py` ("caption")
EVAL_STYLE = dict(antialias=False, noise=3.0, background=228)  # a fixed look training never uses by default


@dataclass
class MixWeights:
    """Relative weights of the SFT mix (normalised when drawn)."""
    dialogue: float = 0.45  # one image, 1..6 question turns
    two_image: float = 0.15  # two images, compare_count / which_has / both_have
    digit: float = 0.15  # a handwritten digit (train split)
    text: float = 0.10  # no image at all
    caption: float = 0.15  # one image, describe it
    motion: float = 0.05  # a clip of 3..5 frames, "Which way does the red circle move?" (motion.py)
    canonical: float = 0.65  # share of turns in the contract's exact wording (the rest in training wordings)
    balanced: float = 0.35  # share of image dialogues opened by a question drawn like the evaluation's (every
    # answer alike: count_color 3 and 4, near-miss no's, every colour, place and size)
    absent: float = 0.08  # share of one-image dialogues that also ask about an object that is not there
    follow_up: float = 1.0  # share of one-image dialogues that go on after their first question; the rest ask
    # one. Under "turn" attention (config.VLMConfig) only the question in the image's own turn can be read by the
    # image's tokens, so a lower share teaches that path more per token.


def _train_scene(rng: random.Random):
    return sample_scene(random.Random(train_seed(rng.getrandbits(48))))


# A dialogue's text is capped: with the wordings' polite frames and longer answers six turns could outgrow the
# quickstart's rows of 256 tokens, and a sample longer than a row is an error, not a truncation.
DIALOGUE_CHARS = 400


def _turns(qas: list[QA], rng: random.Random, canonical: float, n_images: int) -> list[dict]:
    """The questions as user/assistant turns, each in the contract's wording with probability `canonical`, else
    in a training wording; turns past DIALOGUE_CHARS characters are left out (the first one never)."""
    conv, chars = [], 0
    for i, qa in enumerate(qas):
        if rng.random() >= canonical:
            qa = paraphrase(qa, rng)
        chars += len(qa.question) + len(qa.answer)
        if i and chars > DIALOGUE_CHARS:
            break
        conv.append({"role": "user", "content": (IMAGE * n_images if i == 0 else "") + qa.question})
        conv.append({"role": "assistant", "content": qa.answer})
    return conv


def _dialogue(rng: random.Random, size: int, w: MixWeights) -> dict:
    srng = random.Random(train_seed(rng.getrandbits(48)))  # every scene of this sample comes from one train seed
    first: list[QA] = []
    if rng.random() < w.balanced:
        first = [balanced_qa(rng.choice([k for k in SINGLE_KINDS if k != "caption"]), srng)]
        scene = first[0].scenes[0]
    else:
        scene = sample_scene(srng)
    qas = [qa for qa in canonical_questions(scene, rng) if not first or qa.kind != first[0].kind]
    chosen = first + rng.sample(qas, rng.randint(1 - len(first), min(6, len(qas)) - len(first)))
    if rng.random() < w.absent and (qa := absent_qa(scene, rng.choice(_ABSENT), rng)) is not None:
        chosen = chosen[:5]  # still at most six turns
        chosen.insert(rng.randint(0, len(chosen)), qa)
    if w.follow_up < 1 and rng.random() >= w.follow_up:  # (no draw at 1: the default stream stays as it was)
        chosen = chosen[:1]
    conv = _turns(chosen, rng, w.canonical, 1)
    return {"conversations": conv, "images": [render(scene, size, rng, jitter=True)], "ground": _ground(chosen, conv)}


def _ground(qas: list[QA], conv: list[dict]) -> list[tuple[int, int, int]]:
    """(answer turn, image, cell) of the objects each kept question is about (data/grounding.py)."""
    return [(t, i, cell) for t, qa in enumerate(qas[:len(conv) // 2]) for i, cell in question_objects(qa)]


_ABSENT = ("color", "shape", "position:near", "size:near", "position:far", "size:far")


def _two_image(rng: random.Random, size: int, w: MixWeights) -> dict:
    srng = random.Random(train_seed(rng.getrandbits(48)))
    if rng.random() < w.balanced:
        first = [balanced_qa(rng.choice(TWO_IMAGE_KINDS), srng)]
        a, b = first[0].scenes
    else:  # the scenes share a colour+shape, so both_have is yes half the time (see two_image_questions)
        first, (a, b) = [], sample_scene_pair(srng, share=True)
    qas = [qa for qa in two_image_questions(a, b, rng) if not first or qa.kind != first[0].kind]
    chosen = first + rng.sample(qas, rng.randint(1 - len(first), len(qas)))
    conv = _turns(chosen, rng, w.canonical, 2)
    return {"conversations": conv, "images": [render(a, size, rng, jitter=True), render(b, size, rng, jitter=True)],
            "ground": _ground(chosen, conv)}


def _digit(rng: random.Random, size: int, w: MixWeights) -> dict:
    images, labels = load_digit_split("train")
    i = rng.randrange(len(labels))
    qa = digit_qa(int(labels[i])) if rng.random() < w.canonical else digit_qa(int(labels[i]), rng)
    resample = rng.choices(["nearest", "bilinear", "bicubic"], [0.5, 0.3, 0.2])[0]
    return {"conversations": [{"role": "user", "content": IMAGE + qa.question},
                              {"role": "assistant", "content": qa.answer}],
            "images": [render_digit(images[i], size, resample)]}


def _caption(rng: random.Random, size: int, w: MixWeights) -> dict:
    scene = _train_scene(rng)
    request = CAPTION_REQUEST if rng.random() < 0.5 else worded("caption", {}, rng, "train")
    # The contract's request always gets the canonical caption (objects in reading order): one fixed order is
    # far easier for a small model to enumerate without repeats or omissions than a shuffled one.
    canonical = request == CAPTION_REQUEST or rng.random() < w.canonical
    text = caption(scene) if canonical else caption(scene, rng)
    return {"conversations": [{"role": "user", "content": IMAGE + request}, {"role": "assistant", "content": text}],
            "images": [render(scene, size, rng, jitter=True)]}


def _text_turn(rng: random.Random) -> tuple[str, str]:
    """One question and answer without any image: small talk, facts about shapes and colours, tiny sums."""
    topic = rng.randrange(9)
    if topic == 0:
        return rng.choice([("Hello!", "Hello! Show me a picture and ask me about it."),
                           ("Hi, who are you?", "I am a small vision-language model. I answer questions about images."),
                           ("What can you do?", "I can describe images of shapes and answer questions about them."),
                           ("Thank you!", "You are welcome!")])
    if topic == 1:
        return rng.choice([("Which colors do you know?", "I know red, green, blue, yellow, purple and orange."),
                           ("Which shapes do you know?", "I know circles, squares, triangles, diamonds and crosses.")])
    if topic == 2:
        shape = rng.choice(SHAPES)
        sides = {"circle": "A circle has no corners; it is one round line.", "square": "A square has four equal sides.",
                 "triangle": "A triangle has three sides.", "diamond": "A diamond has four equal sides.",
                 "cross": "A cross has twelve sides."}
        return f"How many sides does {article(shape)} have?", sides[shape]
    if topic == 3:
        a, b, c = rng.choice([("red", "yellow", "orange"), ("blue", "yellow", "green"), ("red", "blue", "purple")])
        return f"What color do you get when you mix {a} and {b}?", f"Mixing {a} and {b} gives {c}."
    if topic == 4:
        thing, color = rng.choice([("the sky", "blue"), ("grass", "green"), ("a banana", "yellow"),
                                   ("a ripe tomato", "red"), ("an orange", "orange"), ("a plum", "purple")])
        return f"What color is {thing}?", f"{thing[0].upper() + thing[1:]} is usually {color}."
    if topic == 5:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if topic == 6:
        n = rng.randint(0, 8)
        return f"What number comes after {n}?", f"After {n} comes {n + 1}."
    if topic == 7:
        what = rng.choice(["a square", "a circle", "a triangle", "a diamond", "a cross"])
        info = {"a square": "four equal sides and four right angles", "a circle": "a round line with no corners",
                "a triangle": "three sides and three corners", "a diamond": "a square turned by 45 degrees",
                "a cross": "a plus sign made of two crossing bars"}
        return f"What is {what}?", f"{what[0].upper() + what[1:]} is {info[what]}."
    # a question about an image when there is none: say so instead of inventing one
    qa = ask(rng.choice(["count", "count_color", "exists", "position", "caption"]), _train_scene(rng), rng)
    return qa.question, rng.choice(["I do not see an image in this conversation. Please send one.",
                                    "There is no image here. Please share a picture and I will answer."])


def _text(rng: random.Random, size: int, w: MixWeights) -> dict:
    conv = []
    for _ in range(rng.randint(1, 3)):
        q, a = _text_turn(rng)
        conv += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"conversations": conv, "images": []}


def _motion(rng: random.Random, size: int, w: MixWeights) -> dict:
    clip = sample_clip(random.Random(train_seed(rng.getrandbits(48))), rng.randint(*TRAIN_FRAMES))
    canonical = rng.random() < w.canonical
    question = motion_question(clip) if canonical else motion_question(clip, rng, "train")
    answer = motion_answer(clip) if canonical else motion_answer(clip, rng)
    return {"conversations": [{"role": "user", "content": IMAGE * len(clip.frames) + question},
                              {"role": "assistant", "content": answer}],
            "images": render_clip(clip, size, rng, jitter=True)}


_MAKERS = {"dialogue": _dialogue, "two_image": _two_image, "digit": _digit, "text": _text, "caption": _caption,
           "motion": _motion}


def make_sample(rng: random.Random, *, image_size: int = 96, kinds: str = "sft",
                mix: MixWeights | None = None) -> dict:
    """One training conversation. kinds: "caption" (pretraining: describe one image), "sft" (the weighted mix of
    MixWeights), or one part of the mix by name: "dialogue", "two_image", "digit", "text"."""
    w = mix or MixWeights()
    if kinds == "sft":
        names = [f.name for f in fields(MixWeights) if f.name in _MAKERS]
        kinds = rng.choices(names, [getattr(w, n) for n in names])[0]
    if kinds not in _MAKERS:
        raise ValueError(f"unknown kinds {kinds!r}; expected 'sft' or one of {list(_MAKERS)}")
    return _MAKERS[kinds](rng, image_size, w)


EVAL_KINDS = SINGLE_KINDS + TWO_IMAGE_KINDS + ("absent",)
EVAL_FRAMES = 4  # frames per motion clip in the evaluation


def _item(kind: str, question: str, qa: QA, images: list, wording: str) -> dict:
    return {"kind": kind, "question": IMAGE * len(images) + question, "key": qa.key, "answer": qa.answer,
            "images": images, "wording": wording}


def eval_items(n_per_kind: int, seed: int = 0, image_size: int = 96, unseen: bool = True) -> list[dict]:
    """The held-out evaluation set on eval_seed scenes drawn in EVAL_STYLE: n_per_kind questions of every kind of
    the contract and of "absent", each kind walking its answers in turn (`balanced.CYCLES`: every answer alike),
    in the contract's exact wording ("wording": "canonical"), then all 360 held-out digits. With unseen=True the
    same scenes are asked again in wordings training never uses ("wording": "unseen", `wording.py`'s held-out
    templates), and n_per_kind held-out digits too. Same arguments -> the same items."""
    if n_per_kind < 0 or seed < 0:
        raise ValueError(f"n_per_kind and seed must be >= 0, got {n_per_kind} and {seed}")
    items, reworded = [], []
    for k, kind in enumerate(EVAL_KINDS):
        cycle = CYCLES[kind]
        for i in range(n_per_kind):
            rng = random.Random(eval_seed((seed * 100 + k) * EVAL_KIND_SEED_BLOCK + i))
            qa = balanced_qa(kind, rng, cycle[i % len(cycle)])
            images = [render(s, image_size, rng, **EVAL_STYLE) for s in qa.scenes]
            items.append(_item(kind, qa.question, qa, images, "canonical"))
            if unseen:
                asked = qa.slots["ask"] if kind == "absent" else kind
                reworded.append(_item(kind, worded(asked, qa.slots, rng, "held_out"), qa, images, "unseen"))
    for i in range(n_per_kind):  # motion (ours): the four directions in turn
        rng = random.Random(eval_seed((seed * 100 + len(EVAL_KINDS)) * EVAL_KIND_SEED_BLOCK + i))
        clip = sample_clip(rng, EVAL_FRAMES, DIRECTIONS[i % len(DIRECTIONS)])
        frames = render_clip(clip, image_size, rng, **EVAL_STYLE)
        qa = QA("motion", motion_question(clip), motion_answer(clip), clip.direction)
        items.append(_item("motion", qa.question, qa, frames, "canonical"))
        if unseen:
            reworded.append(_item("motion", motion_question(clip, rng, "held_out"), qa, frames, "unseen"))
    images, labels = load_digit_split("eval")
    for j, (px, label) in enumerate(zip(images, labels)):
        qa = digit_qa(int(label))
        items.append(_item("digit", qa.question, qa, [render_digit(px, image_size)], "canonical"))
    if unseen and n_per_kind:
        rng = random.Random(eval_seed(seed * 100 + 99))
        for j in range(0, len(labels), max(1, len(labels) // n_per_kind))[:n_per_kind]:
            reworded.append(_item("digit", worded("digit", {}, rng, "held_out"), digit_qa(int(labels[j])),
                                  items[j - len(labels)]["images"], "unseen"))
    return items + reworded
