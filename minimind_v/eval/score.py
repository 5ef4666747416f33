"""How an answer is scored: the shapes-world contract's rules, word for word.

Lower-case, punctuation becomes spaces, whole words only. Then one rule per kind of key:
- a word from a closed list (colour, shape, size, position): the key is there and no other word of that list;
  for positions the longest name wins, so "top left" is one name and never also "top".
- a number (count, count_color, digit): the first number in the answer, as digits or a word; "no"/"none" are 0.
- yes/no and first/second: the first of the two words to occur is the answer.
- caption: F1 between the {color} {shape} pairs the answer names and the scene's pairs.
- motion (ours, not the contract's: which way an object moves over a clip's frames): a closed list like colours,
  the key direction is named and no other of left / right / up / down.
- absent (ours, not the contract's: a question about an object that is not there; the key names that object):
  right when the answer says so (a negation: no, not, none, nothing, cannot, n't ...) and names no colour, size or
  position beyond the key's own words, i.e. does not describe the missing object as if it were there.
The lists are written out here on purpose: the rule is the contract's, not whatever the generator happens to hold.
"""
from __future__ import annotations

import re

COLOR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPE_WORDS = ("circle", "square", "triangle", "diamond", "cross")
SIZE_WORDS = ("small", "large")
POSITION_NAMES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
NUMBER_WORDS = {"no": 0, "none": 0, "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
                "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}

DIRECTION_WORDS = ("left", "right", "up", "down")
LIST_KINDS = {"color": COLOR_WORDS, "shape": SHAPE_WORDS, "size": SIZE_WORDS, "motion": DIRECTION_WORDS}
NUMBER_KINDS = ("count", "count_color", "digit")
CHOICE_KINDS = {"exists": ("yes", "no"), "both_have": ("yes", "no"),
                "compare_count": ("first", "second"), "which_has": ("first", "second")}
NEGATIONS = ("no", "not", "none", "nothing", "nowhere", "cannot", "neither", "nor", "absent", "missing")
KINDS = (*LIST_KINDS, "position", *NUMBER_KINDS, *CHOICE_KINDS, "caption", "absent")


def words(text: str) -> list[str]:
    """Lower-case, every character that is not a letter or digit becomes a space, split into words."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def positions_named(text: str) -> list[str]:
    """Position names in reading order, longest match first ("top left" is one name, not "top" + "left")."""
    toks, found, i = words(text), [], 0
    while i < len(toks):
        two = " ".join(toks[i:i + 2])
        if i + 1 < len(toks) and two in POSITION_NAMES:
            found.append(two)
            i += 2
            continue
        if toks[i] in POSITION_NAMES:
            found.append(toks[i])
        i += 1
    return found


def first_number(text: str) -> int | None:
    """The first number in the text, written as digits or as a word; None when there is none."""
    for tok in words(text):
        if tok.isdigit():
            return int(tok)
        if tok in NUMBER_WORDS:
            return NUMBER_WORDS[tok]
    return None


def caption_pairs(text: str) -> set[tuple[str, str]]:
    """Every "{color} {shape}" the text names: a colour word directly followed by a shape word."""
    toks = words(text)
    return {(a, b) for a, b in zip(toks, toks[1:]) if a in COLOR_WORDS and b in SHAPE_WORDS}


def caption_f1(answer: str, scene_pairs: set[tuple[str, str]]) -> float:
    """F1 of recall (share of the scene's objects named) and precision (share of named pairs in the scene)."""
    named = caption_pairs(answer)
    hits = len(named & set(scene_pairs))
    if not named or not scene_pairs or not hits:
        return 0.0
    precision, recall = hits / len(named), hits / len(scene_pairs)
    return 2 * precision * recall / (precision + recall)


def says_absent(answer: str, key: str) -> bool:
    """The answer denies the object (a negation word, or a contraction like "isn't") and attributes no colour,
    size or position to it: colour and size words other than the key's own, and every position name, count
    against it."""
    toks = words(answer)
    denies = any(t in NEGATIONS for t in toks) or "n't" in answer.lower().replace("’", "'")
    allowed = set(words(key))
    invented = (set(toks) - allowed) & set(COLOR_WORDS + SIZE_WORDS)
    return denies and not invented and not positions_named(answer)


def read_key(kind: str, answer: str, key: str = "") -> str:
    """What the answer says under the kind's rule, for confusion tables: the word(s) of the kind's list it names
    ("red", "red+blue"), the first number or choice word; for "absent", "not there" when the answer denies the
    object, else the colour/size/position words it gave the object (beyond the key's); "unparsed" where it names
    nothing the rule reads. Captions: "-" (they are scored by F1)."""
    if kind in LIST_KINDS or kind == "position":
        found = positions_named(answer) if kind == "position" else [t for t in words(answer) if t in LIST_KINDS[kind]]
        return "+".join(sorted(set(found))) or "unparsed"
    if kind in NUMBER_KINDS:
        n = first_number(answer)
        return "unparsed" if n is None else str(n)
    if kind in CHOICE_KINDS:
        return next((t for t in words(answer) if t in CHOICE_KINDS[kind]), "unparsed")
    if kind == "absent":
        if says_absent(answer, key):
            return "not there"
        named = {t for t in words(answer) if t in COLOR_WORDS + SIZE_WORDS} - set(words(key))
        return "+".join(sorted(named | set(positions_named(answer)))) or "unparsed"
    if kind == "caption":
        return "-"
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def score(kind: str, answer: str, key: str) -> float:
    """1.0 if `answer` is right for `key` under the contract's rule for `kind`, else 0.0; captions get their F1.

    For captions the key is the reference caption (or any text naming exactly the scene's pairs)."""
    if kind in LIST_KINDS:
        found = set(words(answer)) & set(LIST_KINDS[kind])
        return float(found == {key})
    if kind == "position":
        return float(set(positions_named(answer)) == {key})
    if kind in NUMBER_KINDS:
        if not str(key).strip().isdigit():
            raise ValueError(f"key {key!r} of kind {kind!r} must be a whole number written in digits")
        got = first_number(answer)
        return float(got is not None and got == int(key))
    if kind in CHOICE_KINDS:
        options = CHOICE_KINDS[kind]
        if key not in options:
            raise ValueError(f"key {key!r} is not one of {options} for kind {kind!r}")
        first = next((t for t in words(answer) if t in options), None)
        return float(first == key)
    if kind == "caption":
        return caption_f1(answer, caption_pairs(key))
    if kind == "absent":
        return float(says_absent(answer, key))
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
