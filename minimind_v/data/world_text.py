"""The shapes world's language: captions, one small question maker per kind (`ask`, `ask_two`), and phrasing
lists whose first entry is the contract's exact string (SHAPES_WORLD.md).

Scenes and pixels live in `world.py`. This half only reads scenes, so it needs `Scene` for type hints alone.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .wording import question as worded
from .wording import templates
from .world_vocab import COLORS, SHAPES

if TYPE_CHECKING:
    from .world import Scene

__all__ = ["ALL_PAIRS", "NUMBER_NAMES", "QA", "QUESTIONS", "SINGLE_KINDS", "TWO_IMAGE_KINDS", "article", "ask",
           "ask_two", "canonical_questions", "caption", "make_qa", "paraphrase", "place", "two_image_questions"]

NUMBER_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_PLACE = {"center": "in the center", "left": "on the left", "right": "on the right"}


def article(phrase: str) -> str:
    """'a red circle' / 'an orange square': English picks the article by the next word's first sound."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def place(position: str) -> str:
    """'at the top left', 'in the center', 'on the left'."""
    return _PLACE.get(position, f"at the {position}")


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene, rng: random.Random | None = None) -> str:
    """Every object as "{size} {color} {shape}" with its place. rng=None gives the canonical form, objects in
    reading order: "A large red circle at the top left, a small blue square in the center and ..." """
    objs = list(scene.objects)
    if rng is None:
        return _cap(_join([f"{article(f'{o.size} {o.color} {o.shape}')} {place(o.position)}" for o in objs])) + "."
    rng.shuffle(objs)
    style = rng.randrange(5)
    if style == 3:  # place first
        parts = [f"{place(o.position)} there is {article(f'{o.size} {o.color} {o.shape}')}" for o in objs]
        return _cap("; ".join(parts)) + "."
    items = _join([f"{article(f'{o.size} {o.color} {o.shape}')} {place(o.position)}" for o in objs])
    n = len(objs)
    if style == 1:
        count = str(n) if rng.random() < 0.5 else NUMBER_NAMES[n]
        return (f"There is {items}." if n == 1 else f"There are {count} shapes: {items}.")
    if style == 2:
        return f"The image shows {items}."
    if style == 4:
        return f"I see {items}."
    return _cap(items) + "."


@dataclass
class QA:
    kind: str
    question: str  # without the <image> placeholder(s)
    answer: str
    key: str  # what the scorer checks; for captions the canonical caption
    slots: dict = field(default_factory=dict, repr=False)  # what the question is about, for paraphrasing
    scenes: tuple[Scene, ...] = field(default=(), repr=False)


def _count_answer(n: int, what: str, canonical: bool, rng: random.Random | None) -> str:
    """'There are 3 shapes.', 'There is 1 red shape.', 'There are no red shapes.' and, off canonical, variants."""
    noun = what + ("" if n == 1 else "s")
    if canonical or rng is None:
        return f"There are no {noun}." if n == 0 else f"There {'is' if n == 1 else 'are'} {n} {noun}."
    num = rng.choice([str(n), NUMBER_NAMES[n]])
    if n == 0:
        return rng.choice([f"There are no {noun}.", "None.", "Zero.", "0.", f"I see no {noun}.",
                           f"There are 0 {noun}."])
    return rng.choice([f"There {'is' if n == 1 else 'are'} {num} {noun}.", f"{_cap(num)}.", f"I count {num} {noun}.",
                       f"I see {num} {noun}."])


# Question wordings per kind (`wording.py`): hundreds each, the first the contract's exact string. Training draws
# only those `wording.train_templates` allows; the rest are held out for the evaluation's unseen wordings.
QUESTIONS = {kind: list(templates(kind)) for kind in ("color", "shape", "count", "count_color", "exists", "position",
                                                      "size", "caption", "compare_count", "which_has", "both_have")}


def _answers(kind: str, s: dict, key: str) -> list[str]:
    """Answer phrasings for a question; the first is the canonical one. Each keeps the key word unambiguous
    under the scoring rule: no second word of the key's list, and yes/no or first/second comes first."""
    if kind == "color":
        return [f"The {s['shape']} is {key}.", f"It is {key}.", f"{_cap(key)}.", f"The {s['shape']} is colored {key}.",
                f"The color of the {s['shape']} is {key}.", f"It's {key}.", f"I see {article(key + ' ' + s['shape'])}."]
    if kind == "shape":
        return [f"The {s['color']} object is {article(key)}.", f"It is {article(key)}.", f"{_cap(article(key))}.",
                f"{_cap(key)}.", f"The {s['color']} shape is {article(key)}.", f"It's {article(key)}.",
                f"I see {article(s['color'] + ' ' + key)}."]
    if kind == "position":
        return [f"The {s['obj']} is {place(key)}.", f"It is {place(key)}.", f"{_cap(key)}.",
                f"The {s['obj']} is {place(key)} of the image.", f"You can find it {place(key)}.",
                f"It's {place(key)}.", f"{_cap(place(key))}."]
    if kind == "size":
        return [f"The {s['obj']} is {key}.", f"It is {key}.", f"{_cap(key)}.", f"It is {article(key)} {s['shape']}.",
                f"The {s['obj']} is {key} in size.", f"It's {key}.", f"{_cap(article(key + ' ' + s['obj']))}."]
    if kind == "exists":
        if key == "yes":
            return [f"Yes, there is {s['a_obj']}.", "Yes.", f"Yes, I see {s['a_obj']}.",
                    f"Yes, the image contains {s['a_obj']}.", "Yes, there is."]
        return [f"No, there is no {s['obj']}.", "No.", f"No, I do not see {s['a_obj']}.",
                f"No, the image has no {s['obj']}.", "No, there isn't."]
    if kind == "compare_count":
        other = "second" if key == "first" else "first"
        return [f"The {key} image.", f"The {key} image has more shapes.", f"The {key} one.", f"{_cap(key)}.",
                f"The {key} image: it has {s['more']} shapes and the {other} has {s['fewer']}."]
    if kind == "which_has":
        return [f"The {key} image.", f"The {key} image contains {s['a_obj']}.", f"The {key} one.", f"{_cap(key)}.",
                f"{_cap(s['a_obj'])} is in the {key} image.", f"It is in the {key} image."]
    if kind == "both_have":
        if key == "yes":
            return [f"Yes, both images contain {s['a_obj']}.", "Yes.", f"Yes, there is {s['a_obj']} in each image."]
        only = s["only"]  # "first", "second" or "" (neither)
        detail = f"only the {only} image contains" if only else "neither image contains"
        return [f"No, {detail} {s['a_obj']}.", "No.", f"No, {detail} one."]
    if kind == "absent":  # the key names what the question asked about, which is not in the image
        return [f"There is no {key} in the image.", f"I do not see {article(key)} in the image.",
                f"There is no {key} here.", f"The image has no {key}.", f"I can't find {article(key)} in this image."]
    raise ValueError(f"unknown question kind {kind!r}")


def make_qa(kind: str, key: str, scenes: tuple[Scene, ...], **slots) -> QA:
    """A question of `kind` in the contract's exact wording, with its canonical answer. For "absent" (a question
    about an object that is not there) slots["ask"] names the kind whose wording is used and `key` the object."""
    if "color" in slots and "shape" in slots:
        slots["obj"] = f"{slots['color']} {slots['shape']}"
        slots["a_obj"] = article(slots["obj"])
    question = QUESTIONS[slots["ask"] if kind == "absent" else kind][0].format(**slots)
    if kind == "caption":
        answer = key
    elif kind in ("count", "count_color"):
        answer = _count_answer(int(key), slots.get("what", "shape"), True, None)
    else:
        answer = _answers(kind, slots, key)[0]
    return QA(kind, question, answer, key, slots, scenes)


SINGLE_KINDS = ("color", "shape", "count", "count_color", "exists", "position", "size", "caption")
TWO_IMAGE_KINDS = ("compare_count", "which_has", "both_have")
ALL_PAIRS = [(c, s) for c in COLORS for s in SHAPES]


def _absent_pair(present: set[tuple[str, str]], near: set[tuple[str, str]], rng: random.Random) -> tuple[str, str]:
    """A colour+shape not in `present`; half the time one sharing a colour or shape with `near` (a hard 'no')."""
    hard = [p for p in ALL_PAIRS if p not in present and any(p[0] == c or p[1] == s for c, s in near)]
    if hard and rng.random() < 0.5:
        return rng.choice(hard)
    return rng.choice([p for p in ALL_PAIRS if p not in present])


def ask(kind: str, scene: Scene, rng: random.Random, want: str | None = None) -> QA | None:
    """The canonical question of one single-image kind, or None where the contract does not ask it.
    `want` forces the answer of a yes/no question ("yes"/"no"), for exactly balanced evaluation sets."""
    objs = scene.objects
    if kind in ("color", "shape"):  # one attribute of the object that the other attribute names uniquely
        other = "shape" if kind == "color" else "color"
        unique = [o for o in objs if sum(getattr(p, other) == getattr(o, other) for p in objs) == 1]
        if not unique:
            return None
        o = rng.choice(unique)
        return make_qa(kind, getattr(o, kind), (scene,), **{other: getattr(o, other)})
    if kind == "count":
        return make_qa(kind, str(len(objs)), (scene,), what="shape")
    if kind == "count_color":  # mostly a colour that is there, else any colour (often a 0)
        color = rng.choice([o.color for o in objs]) if rng.random() < 0.6 else rng.choice(list(COLORS))
        return make_qa(kind, str(sum(o.color == color for o in objs)), (scene,), color=color, what=f"{color} shape")
    if kind == "exists":
        yes = rng.random() < 0.5 if want is None else want == "yes"
        color, shape = rng.choice(objs).pair if yes else _absent_pair(scene.pairs, scene.pairs, rng)
        return make_qa(kind, "yes" if yes else "no", (scene,), color=color, shape=shape)
    if kind in ("position", "size"):
        o = rng.choice(objs)
        return make_qa(kind, o.position if kind == "position" else o.size, (scene,), color=o.color, shape=o.shape)
    if kind == "caption":
        return make_qa(kind, caption(scene), (scene,))
    raise ValueError(f"unknown single-image kind {kind!r}; expected one of {SINGLE_KINDS}")


def ask_two(kind: str, a: Scene, b: Scene, rng: random.Random, want: str | None = None) -> QA | None:
    """The canonical question of one two-image kind, or None where the contract does not ask it.
    `want` forces the key ("first"/"second" for which_has, "yes"/"no" for both_have) when it is possible."""
    if kind == "compare_count":
        na, nb = len(a.objects), len(b.objects)
        if na == nb:
            return None
        return make_qa(kind, "first" if na > nb else "second", (a, b), more=max(na, nb), fewer=min(na, nb))
    if kind == "which_has":
        only = {"first": sorted(a.pairs - b.pairs), "second": sorted(b.pairs - a.pairs)}
        sides = [side for side in only if only[side] and want in (None, side)]
        if not sides:
            return None
        side = rng.choice(sides)
        color, shape = rng.choice(only[side])
        return make_qa(kind, side, (a, b), color=color, shape=shape)
    if kind == "both_have":
        common = sorted(a.pairs & b.pairs)
        yes = (rng.random() < 0.5 if want is None else want == "yes") and bool(common)
        if want == "yes" and not common:
            return None
        if yes:
            color, shape = rng.choice(common)
        else:
            color, shape = _absent_pair(set(common), a.pairs | b.pairs, rng)
        only = "first" if (color, shape) in a.pairs else "second" if (color, shape) in b.pairs else ""
        return make_qa(kind, "yes" if yes else "no", (a, b), color=color, shape=shape, only=only)
    raise ValueError(f"unknown two-image kind {kind!r}; expected one of {TWO_IMAGE_KINDS}")


def canonical_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """One canonical question of every single-image kind the contract allows for this scene."""
    return [qa for kind in SINGLE_KINDS if (qa := ask(kind, scene, rng)) is not None]


def two_image_questions(a: Scene, b: Scene, rng: random.Random) -> list[QA]:
    """compare_count, which_has, both_have where allowed. both_have is yes half the time when the scenes share
    a colour+shape (`sample_scene_pair` makes sure they do), so yes and no come equally often."""
    return [qa for kind in TWO_IMAGE_KINDS if (qa := ask_two(kind, a, b, rng)) is not None]


def paraphrase(qa: QA, rng: random.Random) -> QA:
    """The same question in other words: a training wording of the question (`wording.py`, never a held-out one)
    and/or another phrasing of the answer, same key."""
    for _ in range(4):  # avoid handing back the canonical pair unchanged
        question = worded(qa.slots["ask"] if qa.kind == "absent" else qa.kind, qa.slots, rng, "train")
        if qa.kind == "caption":
            answer = caption(qa.scenes[0], rng)
        elif qa.kind in ("count", "count_color"):
            answer = _count_answer(int(qa.key), qa.slots["what"], False, rng)
        else:
            answer = rng.choice(_answers(qa.kind, qa.slots, qa.key))
        if (question, answer) != (qa.question, qa.answer):
            break
    return QA(qa.kind, question, answer, qa.key, qa.slots, qa.scenes)
