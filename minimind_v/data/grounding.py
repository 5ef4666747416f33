"""Where an answer should look: the image tokens of the objects its question is about.

A binding question names an object by one attribute and asks for another ("What color is the square?"). To
answer it, the LLM has to look up the image token whose shape is the asked one, a content-based lookup that a
small model forms only after a long plateau (docs/quickstart.md: none formed in 4,000 steps of that question).
The shapes world knows the answer to "where should it look?": the cell of the object. So a training sample can
carry, per answer, the cells of the objects its question is about, and train/grounding.py teaches
attention heads to look there while the answer is written, which removes the plateau.

    question_objects(qa)   the (image, cell) pairs of a question's objects (cell 0..8 in reading order)
    answer_targets(...)    (query position, key position) pairs of an encoded sample
"""
from __future__ import annotations

import torch

from .chat import IGNORE_INDEX
from .world import Scene
from .world_text import QA

GRID = 3  # the shapes world's scenes are a 3 x 3 grid of cells
NOWHERE = (-1, -1)  # "look at nothing": the sample's first token, where attention rests when no object is wanted


def _cells(scene: Scene, **want: str) -> list[int]:
    return [o.row * GRID + o.col for o in scene.objects if all(getattr(o, k) == v for k, v in want.items())]


def question_objects(qa: QA) -> list[tuple[int, int]]:
    """(image index, cell) of every object the question asks about: the square of "What color is the square?",
    the red circle in each image that has one. NOWHERE stands for "not there" (a "no" to exists, a question about
    an absent object) and is also one of a colour count's targets, so that the share of attention left on it
    tells how many there are (1 / (n + 1)). Empty where the question is about no object in particular (count,
    caption, which image has more)."""
    s, kind = qa.slots, qa.kind
    if kind == "absent":
        return [NOWHERE]
    if kind == "count_color":
        return [(0, cell) for cell in _cells(qa.scenes[0], color=s["color"])] + [NOWHERE]
    if kind == "color":
        want = {"shape": s["shape"]}
    elif kind == "shape":
        want = {"color": s["color"]}
    elif kind in ("exists", "position", "size", "which_has", "both_have"):
        want = {"color": s["color"], "shape": s["shape"]}
    else:
        return []
    return [(i, cell) for i, scene in enumerate(qa.scenes) for cell in _cells(scene, **want)] or [NOWHERE]


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of every run of True."""
    runs, start = [], None
    for i, f in enumerate(flags + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _cell_tokens(image_pos: list[int], first: int, cell: int, g: int) -> list[int]:
    """Positions of the tokens of a g x g image grid (starting at image_pos[first]) whose squares overlap `cell`."""
    row, col = divmod(cell, GRID)
    near = [[t for t in range(g) if t * GRID < (i + 1) * g and (t + 1) * GRID > i * g] for i in (row, col)]
    return [image_pos[first + r * g + c] for r in near[0] for c in near[1]]


def answer_targets(input_ids: torch.Tensor, labels: torch.Tensor, ground: list[tuple[int, int, int]],
                   image_token_id: int, tokens_per_image: int) -> torch.Tensor:
    """(query, key) positions [n, 2]: every position that predicts a token of answer `turn` (its labelled run)
    paired with every image token covering `cell` of image `image`, for each (turn, image, cell) of `ground`;
    NOWHERE pairs them with the sample's first token.

    An image's tokens form a g x g grid in reading order (g = sqrt(tokens_per_image)); a cell of the 3 x 3 scene
    grid is stood for by every token whose square overlaps it (exactly one when g = 3). Turns or images cut off by
    max_len are skipped."""
    g = round(tokens_per_image ** 0.5)
    if g * g != tokens_per_image:
        raise ValueError(f"grounding needs a square token grid, got {tokens_per_image} tokens per image")
    image_pos = (input_ids == image_token_id).nonzero().flatten().tolist()
    n_images = len(image_pos) // tokens_per_image
    answers = _runs((labels != IGNORE_INDEX).tolist())
    pairs = []
    for turn, image, cell in ground:
        if turn >= len(answers) or image >= n_images:
            continue
        keys = [0] if (image, cell) == NOWHERE else _cell_tokens(image_pos, image * tokens_per_image, cell, g)
        start, end = answers[turn]
        pairs += [(q, k) for q in range(max(start - 1, 0), end - 1) for k in keys if k < q]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
