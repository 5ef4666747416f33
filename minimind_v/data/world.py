"""The shapes world: scenes of coloured shapes, drawn from a seed, with answers known exactly.

Everything follows the shapes-world contract (SHAPES_WORLD.md). Geometry is stored as fractions of the canvas side S,
so one scene renders at any size. A scene is 1..4 objects, each alone in one cell of a 3 x 3 grid, its centre
uniform in the middle half of that cell; objects that would leave the canvas or overlap are redrawn, so the
centre is uniform over the part of the middle half where the object fits.
The language (captions, questions and answers, paraphrases) is in `world_text.py`; its public names are
imported here too, so `world` stays the one module to import.
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .world_vocab import COLORS, POSITIONS, SHAPES, SIZES

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


# Blocks of seed indices: each consumer of scenes draws from its own block, so no two ever share a scene.
STAGE_SEED_BLOCK = 100_000_000  # training stage k (1, 2, ...) draws train_seed(k * STAGE_SEED_BLOCK + i)
PROBE_SEED_OFFSET = 10_000_000  # the vision probe's held-out scenes: eval_seed(PROBE_SEED_OFFSET + i)
EVAL_KIND_SEED_BLOCK = 1_000_000  # the evaluation set: eval_seed((seed * 100 + kind) * EVAL_KIND_SEED_BLOCK + i)
TOKENIZER_CORPUS_SEED = 10_000_000  # the tokenizer's corpus of rendered conversations (a plain Random seed)


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


def restyle(scene: Scene, changes: dict[int, dict[str, str]], rng: random.Random) -> Scene | None:
    """The scene with some objects given another colour, shape or size ({index: {"color": ..., "size": ...}}), each
    in its own cell and place; a new size draws a new side. None where the result would break a rule (two objects
    sharing colour and shape, or boxes that no longer fit), so callers draw again."""
    objs = list(scene.objects)
    for i, change in changes.items():
        side = rng.uniform(*SIZES[change["size"]]) if change.get("size", objs[i].size) != objs[i].size else None
        objs[i] = replace(objs[i], **change, **({"side": side} if side else {}))
    if len({o.pair for o in objs}) < len(objs):
        return None
    if not all(_fits(o.box, objs[:i] + objs[i + 1:]) for i, o in enumerate(objs)):
        return None
    return Scene(tuple(objs))


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
