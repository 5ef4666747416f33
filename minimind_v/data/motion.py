"""Moving objects: short clips of the shapes world, for questions about video given as frames.

This kind is ours, not the contract's (the contract describes still scenes). A clip is a scene of 1 to 3 objects
in which one object slides one cell left, right, up or down over the frames while the others stay; every frame
is a still scene drawn in the clip's one style. The question names the moving object ("Which way does the red
circle move?"); the key is the direction. A model sees the frames as images in order, exactly as a video
sampled by `video.py` reaches it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from PIL import Image

from .world import Obj, Scene, _fits, render, sample_scene

DIRECTIONS = ("left", "right", "up", "down")
STEP = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (rows, cols) moved

# The canonical question, wordings training uses, and wordings held out for the evaluation only.
CANONICAL = "Which way does the {obj} move?"
TRAIN_WORDINGS = ("In which direction does the {obj} move?", "Where is the {obj} going?",
                  "which way is the {obj} moving", "Which direction is the {obj} heading in?",
                  "Tell me which way the {obj} moves.", "Does the {obj} move left, right, up or down?")
HELD_OUT_WORDINGS = ("Can you say in which direction the {obj} travels?", "what direction does the {obj} go")
ANSWERS = ("It moves {d}.", "The {obj} moves {d}.", "{D}.", "It is moving {d}.")
TRAIN_FRAMES = (3, 5)  # frames per training clip: a range, so the model does not learn one clip length only


@dataclass(frozen=True)
class Clip:
    frames: tuple[Scene, ...]
    mover: Obj  # as in the first frame
    direction: str

    @property
    def name(self) -> str:
        return f"{self.mover.color} {self.mover.shape}"


def _moved(o: Obj, direction: str, t: float) -> Obj:
    """The object a fraction t (0..1) of the way to the next cell in `direction`."""
    dr, dc = STEP[direction]
    row, col = (o.row + dr, o.col + dc) if t >= 0.5 else (o.row, o.col)
    return replace(o, row=row, col=col, cx=o.cx + dc * t / 3, cy=o.cy + dr * t / 3)


def _room(scene: Scene, i: int, direction: str) -> bool:
    """Can object i slide one cell in `direction`: inside the grid, and clear of every other object all the way?"""
    o, others = scene.objects[i], [p for j, p in enumerate(scene.objects) if j != i]
    dr, dc = STEP[direction]
    if not (0 <= o.row + dr < 3 and 0 <= o.col + dc < 3):
        return False
    return all(_fits(_moved(o, direction, t / 8).box, others) for t in range(9))


def sample_clip(rng: random.Random, n_frames: int = 4, direction: str | None = None) -> Clip:
    """A clip of `n_frames` scenes (>= 2); `direction` fixes the motion (for balanced evaluation)."""
    if n_frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {n_frames}")
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {DIRECTIONS}")
    while True:
        scene = sample_scene(rng, rng.randint(1, 3))
        i = rng.randrange(len(scene.objects))
        options = [d for d in DIRECTIONS if (direction in (None, d)) and _room(scene, i, d)]
        if not options:
            continue
        d = rng.choice(options)
        frames = []
        for f in range(n_frames):
            objs = list(scene.objects)
            objs[i] = _moved(objs[i], d, f / (n_frames - 1))
            frames.append(Scene(tuple(objs)))
        return Clip(tuple(frames), scene.objects[i], d)


def render_clip(clip: Clip, size: int, rng: random.Random, *, jitter: bool = False,
                **style: float | int | bool) -> list[Image.Image]:
    """Every frame in one style: with jitter=True a background, noise level and anti-aliasing are drawn once
    for the whole clip (a video does not change its lighting from frame to frame); else `style` is used."""
    if jitter:
        style = dict(background=rng.randint(200, 255), noise=rng.uniform(0, 8), antialias=rng.random() < 0.5)
    return [render(s, size, rng, **style) for s in clip.frames]


def motion_question(clip: Clip, rng: random.Random | None = None, wording: str = "canonical") -> str:
    """canonical: the one fixed question; train: a training wording; held_out: one training never sees."""
    pool = {"canonical": (CANONICAL,), "train": TRAIN_WORDINGS, "held_out": HELD_OUT_WORDINGS}[wording]
    template = pool[0] if rng is None else rng.choice(pool)
    return template.format(obj=clip.name)


def motion_answer(clip: Clip, rng: random.Random | None = None) -> str:
    template = ANSWERS[0] if rng is None else rng.choice(ANSWERS)
    return template.format(d=clip.direction, D=clip.direction.capitalize(), obj=clip.name)
