"""Many wordings of every question kind, and a fixed share of them kept out of training to measure unseen ones.

A kind's templates are written as a tiny grammar: `[a|b|c]` is a choice (`[|x]` makes x optional) and `{slot}` is
filled from the question (`{shape}`, `{color}`, `{obj}` = "red circle", `{a_obj}` = "a red circle"). Each kind has
direct questions, clauses behind "Can you tell me ...?" and noun phrases behind "Name ...", and any direct question
may get a polite or framing prefix ("Please, ...", "Looking at the picture, ...") or a closing "please". That makes
hundreds of distinct templates per kind; `templates(kind)` lists them, the contract's exact question first.

Held out: a template is held out when a stable hash of its kind and text (SHA-256, first 8 bytes) falls in the
lowest HELD_OUT_PER_MILLE of 1000 buckets; the contract's exact question never is. Training draws only from
`train_templates`, the evaluation's unseen wordings only from `held_out_templates`.

On top of the template, `roughen` adds the surface noise people type: all lower case, no final mark, a doubled
space, or one typo (swapped, dropped or doubled letter) in a filler word. Slot words (colours, shapes, sizes,
places) and the words that say what is asked (how many, where, colour, size, first, both ...) are never misspelt,
so the key stays recoverable.
"""
from __future__ import annotations

import functools
import hashlib
import random
import re

from .world_vocab import COLORS, POSITIONS, SHAPES, SIZES

HELD_OUT_SHARE = 0.2  # a fifth of each kind's wordings (cores) are kept for evaluation only

_PIC = "[image|picture|photo]"
_PICS = "[images|pictures|photos]"
_IN = f"[| in the {_PIC}| in this {_PIC}]"
_THINGS = "[shapes|objects|figures|items|things]"
_THING = "[object|figure|item|thing|shape]"
_COL = "[color|colour]"

# Per kind: (direct questions, clauses for "Can you tell me ...?", noun phrases / imperatives' objects).
# The first direct question of each kind is the contract's exact string (SHAPES_WORLD.md).
_SPECS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "color": (["What color is the {shape}?", f"What {_COL} is the {{shape}}{_IN}?",
               f"Which {_COL} is the {{shape}}?", f"What {_COL} does the {{shape}} have?",
               f"What is the {_COL} of the {{shape}}{_IN}?", f"The {{shape}} is what {_COL}?",
               f"What {_COL} is the {{shape}} [painted|drawn] in?"],
              [f"what {_COL} the {{shape}} is", f"which {_COL} the {{shape}} has"],
              [f"the {_COL} of the {{shape}}"]),
    "shape": (["What shape is the {color} object?", f"What shape is the {{color}} {_THING}{_IN}?",
               f"What is the {{color}} [object|figure|item|thing|one]?", "Which shape is {color}?",
               f"What kind of shape is the {{color}} [one|{_THING}]?", f"What is the shape of the {{color}} {_THING}?",
               f"Which shape has the {_COL} {{color}}?", f"What [form|shape] does the {{color}} {_THING} have?"],
              [f"what shape the {{color}} {_THING} is", "which shape is {color}"],
              [f"the shape of the {{color}} {_THING}"]),
    "count": (["How many shapes are there?", f"How many {_THINGS} are there{_IN}?",
               f"How many {_THINGS} are in the {_PIC}?",
               f"How many {_THINGS} does the {_PIC} [show|contain|have]?",
               f"How many {_THINGS} [do|can] you see{_IN}?", f"How many {_THINGS} are shown{_IN}?",
               f"What is the number of {_THINGS}{_IN}?"],
              [f"how many {_THINGS} there are{_IN}"],
              [f"the number of {_THINGS}{_IN}"]),
    "count_color": (["How many {color} shapes are there?", f"How many {{color}} {_THINGS} are there{_IN}?",
                     f"How many {_THINGS} are {{color}}{_IN}?", f"How many {{color}} {_THINGS} [do|can] you see?",
                     f"What is the number of {{color}} {_THINGS}{_IN}?"],
                    [f"how many {{color}} {_THINGS} there are{_IN}", f"how many {_THINGS} are {{color}}"],
                    [f"the number of {{color}} {_THINGS}{_IN}"]),
    "exists": (["Is there {a_obj}?", f"Is there {{a_obj}}{_IN}?", f"Do you see {{a_obj}}{_IN}?",
                f"Can you [see|find|spot] {{a_obj}}{_IN}?", f"Does the {_PIC} [contain|have|show|include] {{a_obj}}?",
                f"Is {{a_obj}} [present|visible]{_IN}?", f"Is there any {{obj}}{_IN}?"],
               [f"[if|whether] there is {{a_obj}}{_IN}", f"[if|whether] the {_PIC} [contains|has|shows] {{a_obj}}"],
               []),
    "position": (["Where is the {obj}?", f"Where is the {{obj}}{_IN}?", "Where is the {obj} [located|placed]?",
                  "Where can I find the {obj}?", "Where [do|can] you see the {obj}?",
                  f"In which part of the {_PIC} is the {{obj}}?", f"Which part of the {_PIC} is the {{obj}} in?",
                  "What is the [position|location] of the {obj}?", f"Where in the {_PIC} is the {{obj}}?",
                  "Where does the {obj} sit?", "Where's the {obj}?", "Where is the {obj} drawn?"],
                 [f"where the {{obj}} is{_IN}"],
                 ["the [position|location] of the {obj}"]),
    "size": (["Is the {obj} small or large?", "Is the {obj} [large or small|big or small|small or big]?",
              "How [big|large] is the {obj}?", "What size is the {obj}?", "What is the size of the {obj}?",
              "Is the {obj} a small or a large one?", "[Which|What] size does the {obj} have?",
              "Which size is the {obj}?", "Is the {obj} a big one or a small one?",
              "How big is the {obj}: small or large?", "Is the {obj} drawn small or large?"],
             ["[if|whether] the {obj} is small or large", "how big the {obj} is"],
             ["the size of the {obj}"]),
    "caption": (["Describe the image.", f"What is in [the|this] {_PIC}?", f"What do you see{_IN}?",
                 f"What can you see{_IN}?", f"What {_THINGS} are in [the|this] {_PIC}?",
                 f"What does the {_PIC} show?", f"Describe [the|this] {_PIC}[| for me| in one sentence].",
                 f"Caption [the|this] {_PIC}.", f"Write a caption for [the|this] {_PIC}.",
                 f"List the {_THINGS} in [the|this] {_PIC}.",
                 f"Give [a|me a] [short |brief |]description of [the|this] {_PIC}."],
                [f"what is in the {_PIC}", f"what you see{_IN}", f"what the {_PIC} shows"],
                [f"the {_THINGS} in the {_PIC}"]),
    "compare_count": (["Which image has more shapes?", f"Which [image|picture|photo] has more {_THINGS}?",
                       f"Which of the two {_PICS} has more {_THINGS}?",
                       f"Which {_PIC} [contains|shows] more {_THINGS}?",
                       f"In which {_PIC} are there more {_THINGS}?",
                       f"Does the first or the second {_PIC} have more {_THINGS}?"],
                      [f"which {_PIC} has more {_THINGS}"],
                      [f"the {_PIC} with more {_THINGS}"]),
    "which_has": (["Which image contains {a_obj}?", f"Which {_PIC} [contains|has|shows|includes] {{a_obj}}?",
                   f"In which {_PIC} is there {{a_obj}}?", f"Which of the two {_PICS} [contains|shows|has] {{a_obj}}?",
                   f"Is {{a_obj}} in the first or in the second {_PIC}?",
                   f"Where is there {{a_obj}}, first or second {_PIC}?"],
                  [f"which {_PIC} [contains|has] {{a_obj}}"],
                  [f"the {_PIC} that [contains|has|shows] {{a_obj}}"]),
    "both_have": (["Do both images contain {a_obj}?", f"Do both {_PICS} [contain|have|show|include] {{a_obj}}?",
                   f"Is there {{a_obj}} in both {_PICS}?", f"Does each {_PIC} [have|contain|show] {{a_obj}}?",
                   f"Do the two {_PICS} both [show|contain|have] {{a_obj}}?", f"Is {{a_obj}} in both {_PICS}?",
                   f"Can you see {{a_obj}} in both {_PICS}?"],
                  [f"whether both {_PICS} [contain|have] {{a_obj}}", f"if there is {{a_obj}} in both {_PICS}"],
                  []),
    "digit": (["What digit is this?", "Which digit is [shown|this|written here|drawn here]?",
               "What number is [this|written here|shown|drawn here]?", f"What digit do you see{_IN}?",
               "Which number is this?", f"What is the digit{_IN}?", f"Which digit does the {_PIC} show?",
               "What handwritten digit is this?", "What digit is written?"],
              [f"what digit [this is|is written here|is shown{_IN}]", "which number this is"],
              [f"the digit{_IN}", "the handwritten digit", "the number written here"]),
}
_TWO = ("compare_count", "which_has", "both_have")
_ASK = ["[Can|Could] you tell me {c}?", "Please tell me {c}.", "Tell me {c}.", "Do you know {c}?",
        "I [want|would like] to know {c}.", "I'd like to know {c}."]
_NAME = ["[Tell me|Name|Give me|Say|State|Identify] {n}.", "Please [tell me|name|give me|identify] {n}.",
         "[Can|Could] you [tell me|name|identify] {n}?", "{N}, please."]
_PREFIX = ["", "Please,", "Quick question:", "Hey,", "Tell me,", "Now,", f"Looking at the {_PIC},",
           f"Look at the {_PIC}:"]
_PREFIX_TWO = ["", "Please,", "Quick question:", "Hey,", "Tell me,", "Now,", f"Looking at the {_PICS},",
               f"Look at both {_PICS}:"]
_IMPERATIVE = {"count": [f"Count the {_THINGS}{_IN}."], "count_color": [f"Count the {{color}} {_THINGS}{_IN}."],
               "position": ["Locate the {obj}."], "caption": [f"Describe what you see{_IN}."],
               "exists": [f"Check [if|whether] there is {{a_obj}}{_IN}."],
               "both_have": [f"Check [if|whether] both {_PICS} [contain|have] {{a_obj}}."],
               "digit": ["Read the digit."]}
KINDS = tuple(_SPECS)


def expand(spec: str) -> list[str]:
    """Every string the grammar allows, in order: "What [is|was] it" -> ["What is it", "What was it"]; choices
    nest ("[| in the [image|photo]]")."""
    options, rest = _sequence(spec, 0)
    if rest != len(spec):
        raise ValueError(f"unbalanced ']' in template {spec!r}")
    return [re.sub(r" ([?.,:])", r"\1", " ".join(o.split())) for o in options]


def _sequence(spec: str, i: int) -> tuple[list[str], int]:
    """Parse text and [choices] from i up to a '|' or ']' at this depth: (the strings it allows, where it ends)."""
    out = [""]
    while i < len(spec) and spec[i] not in "|]":
        if spec[i] == "[":
            alternatives, i = [], i + 1
            while True:
                options, i = _sequence(spec, i)
                alternatives += options
                if i >= len(spec):
                    raise ValueError(f"unclosed '[' in template {spec!r}")
                i += 1
                if spec[i - 1] == "]":
                    break
            out = [a + b for a in out for b in alternatives]
        else:
            j = i
            while j < len(spec) and spec[j] not in "[|]":
                j += 1
            out = [a + spec[i:j] for a in out]
            i = j
    return out, i


def _lower_first(s: str) -> str:
    return s if s.startswith(("I ", "I'")) else s[0].lower() + s[1:]


def _with_please(q: str) -> list[str]:
    return [q, q[:-1] + ", please" + q[-1]] if q[-1] in "?." else [q]


@functools.lru_cache(maxsize=None)
def _entries(kind: str) -> tuple[tuple[str, str], ...]:
    """(template, core) pairs of a kind: the core is the wording without its polite frame ("Please, ...",
    "Can you tell me ...?"); the holdout goes by core, so a held-out wording is never seen in any frame."""
    if kind not in _SPECS:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")
    direct, clauses, nouns = _SPECS[kind]
    out = [(direct[0], direct[0])]
    for prefix in (p for spec in (_PREFIX_TWO if kind in _TWO else _PREFIX) for p in expand(spec)):
        for core in (q for spec in direct for q in expand(spec)):
            q = f"{prefix} {_lower_first(core)}" if prefix else core
            out += [(t, core) for t in ([q] if prefix.startswith("Please") else _with_please(q))]
    out += [(q, cc) for c in clauses for cc in expand(c) for w in _ASK for q in expand(w.replace("{c}", cc))]
    for n in (n for spec in nouns for n in expand(spec)):
        out += [(q, n) for w in _NAME for q in expand(w.replace("{n}", n).replace("{N}", n[0].upper() + n[1:]))]
    for spec in _IMPERATIVE.get(kind, []):
        for imp in expand(spec):
            out += [(q, imp) for q in ["Please " + _lower_first(imp)] + _with_please(imp)]
    seen, unique = set(), []
    for t, core in out:
        if (k := normalise(t)) not in seen:
            seen.add(k)
            unique.append((t, normalise(core)))
    return tuple(unique)


def templates(kind: str) -> tuple[str, ...]:
    """Every template of a kind, the contract's exact question first, no two alike (case and marks aside)."""
    return tuple(t for t, _ in _entries(kind))


def _hash(kind: str, core: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{kind}\n{core}".encode()).digest()[:8], "big")


@functools.lru_cache(maxsize=None)
def held_out_cores(kind: str) -> frozenset[str]:
    """The cores kept out of training: HELD_OUT_SHARE of a kind's cores, those of lowest stable hash (SHA-256 of
    kind and core), never the contract's exact question."""
    canonical = _entries(kind)[0][1]
    cores = sorted({c for _, c in _entries(kind)} - {canonical}, key=lambda c: _hash(kind, c))
    return frozenset(cores[:max(1, round(HELD_OUT_SHARE * (len(cores) + 1)))])


def normalise(text: str) -> str:
    """What a wording is, with surface noise aside: lower case, single spaces, no final mark."""
    return " ".join(text.lower().split()).rstrip(" ?.!")


def held_out(kind: str, template: str) -> bool:
    """Whether a template is kept out of training (its core is held out)."""
    return normalise(template) in _held_out_set(kind)


@functools.lru_cache(maxsize=None)
def _held_out_set(kind: str) -> frozenset[str]:
    cores = held_out_cores(kind)
    return frozenset(normalise(t) for t, c in _entries(kind) if c in cores)


@functools.lru_cache(maxsize=None)
def train_templates(kind: str) -> tuple[str, ...]:
    return tuple(t for t in templates(kind) if not held_out(kind, t))


@functools.lru_cache(maxsize=None)
def held_out_templates(kind: str) -> tuple[str, ...]:
    return tuple(t for t in templates(kind) if held_out(kind, t))


# Never misspelt: what the question is about, and the words that say what is asked.
PROTECTED = frozenset(
    {w for name in (*COLORS, *SHAPES, *SIZES, *POSITIONS.values()) for w in name.split()}
    | {"color", "colour", "shape", "shapes", "size", "big", "how", "many", "where", "which", "what", "count",
       "number", "digit", "more", "both", "each", "first", "second", "position", "location", "describe",
       "caption", "there", "contain", "contains", "object", "objects"})


def typo(word: str, rng: random.Random) -> str:
    """One slip of the fingers inside a word: two letters swapped, one dropped or one doubled."""
    i = rng.randrange(1, len(word) - 2)
    op = rng.randrange(3)
    if op == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == 1:
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def roughen(text: str, rng: random.Random, p: float = 0.12) -> str:
    """Surface noise, each with probability p: one typo in a filler word, all lower case, no final mark, a
    doubled space. Slot words and question words (PROTECTED) are never touched."""
    words = text.split(" ")
    if rng.random() < p:
        spots = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 4 and w.lower() not in PROTECTED]
        if spots:
            i = rng.choice(spots)
            words[i] = typo(words[i], rng)
    text = " ".join(words)
    if rng.random() < p:
        text = text.lower()
    if rng.random() < p and text[-1] in "?.":
        text = text[:-1]
    if rng.random() < p / 2 and " " in text:
        i = rng.choice([m.start() for m in re.finditer(" ", text)])
        text = text[:i] + "  " + text[i + 1:]
    return text


def question(kind: str, slots: dict, rng: random.Random, split: str = "train", noise: float = 0.12) -> str:
    """A question of one kind in a wording drawn from the split ("train" or "held_out"), slots filled,
    then roughened with probability `noise` per kind of noise."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    pool = train_templates(kind) if split == "train" else held_out_templates(kind)
    return roughen(rng.choice(pool).format(**slots), rng, noise)
