"""The shapes world: scenes of coloured shapes, drawn from a seed, with answers known exactly.

Everything follows the shapes-world contract (SHAPES_WORLD.md). Geometry is stored as fractions of the canvas side S,
so one scene renders at any size. A scene is 1..4 objects, each alone in one cell of a 3 x 3 grid, its centre
uniform in the middle half of that cell; objects that would leave the canvas or overlap are redrawn, so the
centre is uniform over the part of the middle half where the object fits.
The second half holds the language: captions, one small question maker per kind (`ask`, `ask_two`), and
phrasing lists whose first entry is the contract's exact string.
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 90, 220),
          "yellow": (235, 200, 30), "purple": (140, 60, 180), "orange": (245, 130, 30)}
SIZES = {"small": (0.14, 0.18), "large": (0.24, 0.28)}  # bounding-box side as a fraction of S
POSITIONS = {(0, 0): "top left", (0, 1): "top", (0, 2): "top right", (1, 0): "left", (1, 1): "center",
             (1, 2): "right", (2, 0): "bottom left", (2, 1): "bottom", (2, 2): "bottom right"}
TRIANGLE_HEIGHT = math.sqrt(3) / 2  # an equilateral triangle's height per unit of base
GAP = 0.01  # kept free between objects and around the canvas edge (about a pixel at S=96), so edges never touch


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    row: int
    col: int
    cx: float  # centre of the bounding box, fraction of S
    cy: float
    side: float  # bounding-box side (a triangle's base; its box is side x side*sqrt(3)/2)

    @property
    def position(self) -> str:
        return POSITIONS[(self.row, self.col)]

    @property
    def pair(self) -> tuple[str, str]:
        return (self.color, self.shape)

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Axis-aligned bounding box (x0, y0, x1, y1) as fractions of S."""
        half_w = self.side / 2
        half_h = half_w * (TRIANGLE_HEIGHT if self.shape == "triangle" else 1.0)
        return (self.cx - half_w, self.cy - half_h, self.cx + half_w, self.cy + half_h)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]

    @property
    def pairs(self) -> set[tuple[str, str]]:
        return {o.pair for o in self.objects}


def train_seed(i: int) -> int:
    """Seed of the i-th training scene source; even numbers only, so never an `eval_seed`."""
    if i < 0:
        raise ValueError(f"seed index must be >= 0, got {i}")
    return 2 * i


def eval_seed(i: int) -> int:
    """Seed of the i-th held-out scene; odd numbers only, so never a `train_seed`."""
    if i < 0:
        raise ValueError(f"seed index must be >= 0, got {i}")
    return 2 * i + 1


def _fits(box: tuple[float, float, float, float], placed: list[Obj]) -> bool:
    x0, y0, x1, y1 = box
    if x0 < GAP or y0 < GAP or x1 > 1 - GAP or y1 > 1 - GAP:
        return False
    for o in placed:  # disjoint boxes (with a gap) mean disjoint shapes
        a0, b0, a1, b1 = o.box
        if x0 < a1 + GAP and a0 < x1 + GAP and y0 < b1 + GAP and b0 < y1 + GAP:
            return False
    return True


def sample_scene(rng: random.Random, n_objects: int | None = None) -> Scene:
    """A scene obeying every rule of the contract, drawn from `rng` alone (same rng state -> same scene)."""
    n = rng.randint(1, 4) if n_objects is None else n_objects
    if not 1 <= n <= 4:
        raise ValueError(f"a scene has 1 to 4 objects, got n_objects={n_objects}")
    while True:  # a restart is rare: only when early objects leave a later one no room
        cells = sorted(rng.sample(range(9), n))
        pairs: list[tuple[str, str]] = []
        while len(pairs) < n:  # no two objects share colour and shape
            p = (rng.choice(list(COLORS)), rng.choice(SHAPES))
            if p not in pairs:
                pairs.append(p)
        placed: list[Obj] = []
        for cell, (color, shape) in zip(cells, pairs):
            row, col = divmod(cell, 3)
            size = rng.choice(list(SIZES))
            side = rng.uniform(*SIZES[size])
            for _ in range(50):
                # middle half of the cell: from 1/4 to 3/4 of its width, i.e. col/3 + [1/12, 3/12]
                obj = Obj(shape, color, size, row, col, cx=col / 3 + rng.uniform(1 / 12, 3 / 12),
                          cy=row / 3 + rng.uniform(1 / 12, 3 / 12), side=side)
                if _fits(obj.box, placed):
                    placed.append(obj)
                    break
            else:
                break
        if len(placed) == n:
            return Scene(tuple(placed))


def sample_scene_pair(rng: random.Random, share: bool = True) -> tuple[Scene, Scene]:
    """Two independent scenes; with share=True the second is given one colour+shape of the first (its own size
    and place), so "Do both images contain ...?" can be answered yes as often as no."""
    a = sample_scene(rng)
    while True:
        b = sample_scene(rng)
        if not share:
            return a, b
        color, shape = rng.choice(a.objects).pair
        if (color, shape) in b.pairs:
            return a, b
        for i in rng.sample(range(len(b.objects)), len(b.objects)):
            # a new shape has a new box (a triangle's is flatter), so it must still fit among the others
            new = replace(b.objects[i], color=color, shape=shape)
            if _fits(new.box, [o for j, o in enumerate(b.objects) if j != i]):
                return a, Scene(b.objects[:i] + (new,) + b.objects[i + 1:])


# ----------------------------------------------------------------------------------------------- rendering

def _inside(o: Obj, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Which sample points (offsets from the box centre, fractions of S) lie in the shape. Written out
    analytically, so the geometry is exactly the contract's and not a drawing library's edge convention."""
    h = o.side / 2
    if o.shape == "circle":
        return dx * dx + dy * dy <= h * h
    if o.shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if o.shape == "diamond":  # a square turned 45 degrees, its diagonal the side of the box
        return np.abs(dx) + np.abs(dy) <= h
    if o.shape == "cross":  # plus sign, arms one third of the size thick
        a = h / 3
        return ((np.abs(dx) <= a) & (np.abs(dy) <= h)) | ((np.abs(dx) <= h) & (np.abs(dy) <= a))
    if o.shape == "triangle":  # equilateral, pointing up, base = side, centred in its box of height 2t
        t = h * TRIANGLE_HEIGHT
        return (np.abs(dy) <= t) & (np.abs(dx) <= h * (dy + t) / (2 * t))
    raise ValueError(f"unknown shape {o.shape!r}; expected one of {SHAPES}")


def _coverage(o: Obj, size: int, k: int) -> tuple[slice, slice, np.ndarray]:
    """The share of each pixel near the object that the shape covers, from k x k samples per pixel:
    drawing at k times the size and box-filtering down, done only where the object is."""
    x0, y0, x1, y1 = o.box
    c0, c1 = max(0, math.floor(x0 * size)), min(size, math.ceil(x1 * size))
    r0, r1 = max(0, math.floor(y0 * size)), min(size, math.ceil(y1 * size))
    sub = (np.arange(k, dtype=np.float32) + 0.5) / k  # sample points inside a pixel
    xs = ((np.arange(c0, c1, dtype=np.float32)[:, None] + sub).ravel() / size) - o.cx
    ys = ((np.arange(r0, r1, dtype=np.float32)[:, None] + sub).ravel() / size) - o.cy
    hit = _inside(o, xs[None, :], ys[:, None]).view(np.uint8)
    # count the hits of each k x k block by adding strided slices: faster than numpy's reductions over
    # small axes, and no BLAS call (its threads would fight the trainer for the CPU)
    rows = hit[0::k].copy()
    for j in range(1, k):
        rows += hit[j::k]
    cov = rows[:, 0::k].copy()
    for j in range(1, k):
        cov += rows[:, j::k]
    return slice(r0, r1), slice(c0, c1), cov * np.float32(1 / (k * k))


def render(scene: Scene, size: int = 96, rng: random.Random | None = None, *, antialias: bool = True,
           noise: float = 0.0, background: int = 240, jitter: bool = False) -> Image.Image:
    """Draw the scene as an RGB image of size x size.

    Anti-aliasing samples each pixel at 4 x 4 points and averages them: the same as drawing at 4x and
    box-filtering down. Without it a pixel takes the colour of the shape its centre lies in. With jitter=True
    (needs rng) every legal variation of the contract is drawn at random: background 200..255, noise sigma
    0..8, each colour channel moved by up to 15, anti-aliasing on or off, and now and then a canvas of another
    side (>= 48) resized to `size`, as when an evaluator draws at its own S and the model's processor rescales.
    A model trained on that also answers scenes an independent renderer drew."""
    if size < 16:
        raise ValueError(f"image size must be >= 16 pixels (the contract's rules assume >= 48), got {size}")
    if not 0 <= background <= 255:
        raise ValueError(f"background must be a grey level in 0..255, got {background}")
    if jitter and rng is None:
        raise ValueError("render(jitter=True) needs an rng to draw the variations from")
    colors = [COLORS[o.color] for o in scene.objects]
    canvas = size
    if jitter:
        background = rng.randint(200, 255)
        noise = rng.uniform(0.0, 8.0) if rng.random() < 0.7 else 0.0
        antialias = rng.random() < 0.5
        colors = [tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in rgb) for rgb in colors]
        if rng.random() < 0.2:
            canvas = rng.randint(max(48, size // 2), max(64, 2 * size))
    img = np.full((canvas, canvas, 3), background, dtype=np.float32)
    for o, rgb in zip(scene.objects, colors):
        rows, cols, cov = _coverage(o, canvas, 4 if antialias else 1)
        cov = cov[..., None]
        img[rows, cols] = img[rows, cols] * (1 - cov) + np.asarray(rgb, np.float32) * cov
    if noise > 0:
        img += noise * _gaussian((canvas, canvas, 3), rng)
        np.clip(img, 0, 255, out=img)
    img += 0.5  # round to the nearest grey level
    out = Image.frombytes("RGB", (canvas, canvas), img.astype(np.uint8).tobytes())
    if canvas != size:
        out = out.resize((size, size), rng.choice(_RESIZE_FILTERS))
    return out


_RESIZE_FILTERS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)
_BANK_SIZE = 1 << 20


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    return np.random.default_rng(20240601).standard_normal(_BANK_SIZE, dtype=np.float32)


def _gaussian(shape: tuple[int, int, int], rng: random.Random | None) -> np.ndarray:
    """Unit Gaussian noise. Drawing 27k fresh normals costs about as much as rendering the image, so it is
    read from a fixed bank at a random offset (rng None -> offset 0, deterministic)."""
    n = shape[0] * shape[1] * shape[2]
    if n > _BANK_SIZE // 2:
        return np.random.default_rng(rng.getrandbits(32) if rng else 0).standard_normal(shape, dtype=np.float32)
    start = rng.randrange(_BANK_SIZE - n) if rng else 0
    return _noise_bank()[start:start + n].reshape(shape)


# ----------------------------------------------------------------------------------------------- language

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


# Question phrasings per kind; the first is the contract's exact string. Slots: {shape} {color} {obj} {a_obj}.
QUESTIONS = {
    "color": ["What color is the {shape}?", "What colour is the {shape}?", "Which color is the {shape}?",
              "What color does the {shape} have?", "Tell me the color of the {shape}."],
    "shape": ["What shape is the {color} object?", "What is the {color} object?", "Which shape is {color}?",
              "What kind of shape is the {color} one?", "Name the {color} shape."],
    "count": ["How many shapes are there?", "How many objects are in the image?", "How many shapes do you see?",
              "Count the shapes.", "How many shapes are in this picture?"],
    "count_color": ["How many {color} shapes are there?", "How many {color} objects are in the image?",
                    "Count the {color} shapes.", "How many shapes are {color}?"],
    "exists": ["Is there {a_obj}?", "Is there {a_obj} in the image?", "Do you see {a_obj}?",
               "Does the image contain {a_obj}?", "Can you find {a_obj}?"],
    "position": ["Where is the {obj}?", "Where is the {obj} located?", "In which part of the image is the {obj}?",
                 "Where can I find the {obj}?", "What is the position of the {obj}?"],
    "size": ["Is the {obj} small or large?", "Is the {obj} large or small?", "How big is the {obj}?",
             "What size is the {obj}?"],
    "caption": ["Describe the image.", "What is in the image?", "Describe this picture.", "What do you see?",
                "Give a short description of the image.", "What shapes are in this image?", "Caption this image."],
    "compare_count": ["Which image has more shapes?", "Which of the two images has more shapes?",
                      "Which picture contains more objects?", "Which image shows more shapes?"],
    "which_has": ["Which image contains {a_obj}?", "Which image has {a_obj}?", "In which image is there {a_obj}?",
                  "Which of the two images shows {a_obj}?"],
    "both_have": ["Do both images contain {a_obj}?", "Is there {a_obj} in both images?",
                  "Does each image have {a_obj}?", "Do the two images both show {a_obj}?"],
}


def _answers(kind: str, s: dict, key: str) -> list[str]:
    """Answer phrasings for a question; the first is the canonical one. Each keeps the key word unambiguous
    under the scoring rule: no second word of the key's list, and yes/no or first/second comes first."""
    if kind == "color":
        return [f"The {s['shape']} is {key}.", f"It is {key}.", f"{_cap(key)}.", f"The {s['shape']} is colored {key}.",
                f"The color of the {s['shape']} is {key}."]
    if kind == "shape":
        return [f"The {s['color']} object is {article(key)}.", f"It is {article(key)}.", f"{_cap(article(key))}.",
                f"{_cap(key)}.", f"The {s['color']} shape is {article(key)}."]
    if kind == "position":
        return [f"The {s['obj']} is {place(key)}.", f"It is {place(key)}.", f"{_cap(key)}.",
                f"The {s['obj']} is {place(key)} of the image.", f"You can find it {place(key)}."]
    if kind == "size":
        return [f"The {s['obj']} is {key}.", f"It is {key}.", f"{_cap(key)}.", f"It is {article(key)} {s['shape']}.",
                f"The {s['obj']} is {key} in size."]
    if kind == "exists":
        if key == "yes":
            return [f"Yes, there is {s['a_obj']}.", "Yes.", f"Yes, I see {s['a_obj']}.",
                    f"Yes, the image contains {s['a_obj']}."]
        return [f"No, there is no {s['obj']}.", "No.", f"No, I do not see {s['a_obj']}.",
                f"No, the image has no {s['obj']}."]
    if kind == "compare_count":
        other = "second" if key == "first" else "first"
        return [f"The {key} image.", f"The {key} image has more shapes.", f"The {key} one.", f"{_cap(key)}.",
                f"The {key} image: it has {s['more']} shapes and the {other} has {s['fewer']}."]
    if kind == "which_has":
        return [f"The {key} image.", f"The {key} image contains {s['a_obj']}.", f"The {key} one.", f"{_cap(key)}.",
                f"{_cap(s['a_obj'])} is in the {key} image."]
    if kind == "both_have":
        if key == "yes":
            return [f"Yes, both images contain {s['a_obj']}.", "Yes.", f"Yes, there is {s['a_obj']} in each image."]
        only = s["only"]  # "first", "second" or "" (neither)
        detail = f"only the {only} image contains" if only else "neither image contains"
        return [f"No, {detail} {s['a_obj']}.", "No.", f"No, {detail} one."]
    raise ValueError(f"unknown question kind {kind!r}")


def _qa(kind: str, key: str, scenes: tuple[Scene, ...], **slots) -> QA:
    if "color" in slots and "shape" in slots:
        slots["obj"] = f"{slots['color']} {slots['shape']}"
        slots["a_obj"] = article(slots["obj"])
    question = QUESTIONS[kind][0].format(**slots)
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
    if kind == "color":
        unique = [o for o in objs if sum(p.shape == o.shape for p in objs) == 1]
        if not unique:
            return None
        o = rng.choice(unique)
        return _qa(kind, o.color, (scene,), shape=o.shape)
    if kind == "shape":
        unique = [o for o in objs if sum(p.color == o.color for p in objs) == 1]
        if not unique:
            return None
        o = rng.choice(unique)
        return _qa(kind, o.shape, (scene,), color=o.color)
    if kind == "count":
        return _qa(kind, str(len(objs)), (scene,), what="shape")
    if kind == "count_color":  # mostly a colour that is there, else any colour (often a 0)
        color = rng.choice([o.color for o in objs]) if rng.random() < 0.6 else rng.choice(list(COLORS))
        return _qa(kind, str(sum(o.color == color for o in objs)), (scene,), color=color, what=f"{color} shape")
    if kind == "exists":
        yes = rng.random() < 0.5 if want is None else want == "yes"
        color, shape = rng.choice(objs).pair if yes else _absent_pair(scene.pairs, scene.pairs, rng)
        return _qa(kind, "yes" if yes else "no", (scene,), color=color, shape=shape)
    if kind in ("position", "size"):
        o = rng.choice(objs)
        return _qa(kind, o.position if kind == "position" else o.size, (scene,), color=o.color, shape=o.shape)
    if kind == "caption":
        return _qa(kind, caption(scene), (scene,))
    raise ValueError(f"unknown single-image kind {kind!r}; expected one of {SINGLE_KINDS}")


def ask_two(kind: str, a: Scene, b: Scene, rng: random.Random, want: str | None = None) -> QA | None:
    """The canonical question of one two-image kind, or None where the contract does not ask it.
    `want` forces the key ("first"/"second" for which_has, "yes"/"no" for both_have) when it is possible."""
    if kind == "compare_count":
        na, nb = len(a.objects), len(b.objects)
        if na == nb:
            return None
        return _qa(kind, "first" if na > nb else "second", (a, b), more=max(na, nb), fewer=min(na, nb))
    if kind == "which_has":
        only = {"first": sorted(a.pairs - b.pairs), "second": sorted(b.pairs - a.pairs)}
        sides = [side for side in only if only[side] and want in (None, side)]
        if not sides:
            return None
        side = rng.choice(sides)
        color, shape = rng.choice(only[side])
        return _qa(kind, side, (a, b), color=color, shape=shape)
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
        return _qa(kind, "yes" if yes else "no", (a, b), color=color, shape=shape, only=only)
    raise ValueError(f"unknown two-image kind {kind!r}; expected one of {TWO_IMAGE_KINDS}")


def canonical_questions(scene: Scene, rng: random.Random) -> list[QA]:
    """One canonical question of every single-image kind the contract allows for this scene."""
    return [qa for kind in SINGLE_KINDS if (qa := ask(kind, scene, rng)) is not None]


def two_image_questions(a: Scene, b: Scene, rng: random.Random) -> list[QA]:
    """compare_count, which_has, both_have where allowed. both_have is yes half the time when the scenes share
    a colour+shape (`sample_scene_pair` makes sure they do), so yes and no come equally often."""
    return [qa for kind in TWO_IMAGE_KINDS if (qa := ask_two(kind, a, b, rng)) is not None]


def paraphrase(qa: QA, rng: random.Random) -> QA:
    """The same question in other words: another phrasing of the question and/or the answer, same key."""
    for _ in range(4):  # avoid handing back the canonical pair unchanged
        question = rng.choice(QUESTIONS[qa.kind]).format(**qa.slots)
        if qa.kind == "caption":
            answer = caption(qa.scenes[0], rng)
        elif qa.kind in ("count", "count_color"):
            answer = _count_answer(int(qa.key), qa.slots["what"], False, rng)
        else:
            answer = rng.choice(_answers(qa.kind, qa.slots, qa.key))
        if (question, answer) != (qa.question, qa.answer):
            break
    return QA(qa.kind, question, answer, qa.key, qa.slots, qa.scenes)
