"""Questions drawn so that every answer the contract allows is equally likely, as an outside evaluator may draw them.

Natural scenes rarely hold three objects of one colour, and a random "no" is rarely a near miss; a model trained and
scored on natural draws can look better than it is. Here each kind cycles through its answers (`CYCLES`), and a
scene is drawn (or restyled, within the contract's rules) until it gives that answer:
- count 1..4 and count_color 0..4 alike; colour over the 6 colours, shape over the 5 shapes, position over the
  9 places, size small/large alike, the asked object picked uniformly among those the contract allows;
- exists: half yes; of the no's, half near misses (an object there shares the colour or the shape);
- both_have: half yes; of the no's, half near misses in neither image, a quarter in one image only, a quarter far;
- which_has, compare_count: first and second alike;
- absent: a colour, shape, position or size question about an object that is not there (half of the
  position/size ones near misses). Its key names the missing object, and the answer says it is not there.
The evaluation walks each cycle in order on evaluation seeds; training draws from it at random on training seeds.
"""
from __future__ import annotations

import random

from .world import Scene, restyle, sample_scene, sample_scene_pair
from .world_text import ALL_PAIRS, QA, ask, ask_two, make_qa
from .world_vocab import COLORS, POSITIONS, SHAPES, SIZES

CYCLES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS), "shape": SHAPES, "count": ("1", "2", "3", "4"),
    "count_color": ("0", "1", "2", "3", "4"), "exists": ("yes", "no:near", "yes", "no:far"),
    "position": tuple(POSITIONS.values()), "size": tuple(SIZES), "caption": ("any",),
    "compare_count": ("first", "second"), "which_has": ("first", "second"),
    "both_have": ("yes", "no:near", "yes", "no:one", "yes", "no:near", "yes", "no:far"),
    "absent": ("color", "shape", "position:near", "size:near", "color", "shape", "position:far", "size:far"),
}
KINDS = tuple(CYCLES)


def _near(pair: tuple[str, str], scenes: tuple[Scene, ...]) -> bool:
    return any(pair[0] == o.color or pair[1] == o.shape for s in scenes for o in s.objects)


def _missing_pair(scenes: tuple[Scene, ...], near: bool, rng: random.Random) -> tuple[str, str] | None:
    """A colour+shape in none of the scenes, sharing a colour or shape with one of their objects or not."""
    present = set().union(*(s.pairs for s in scenes))
    options = [p for p in ALL_PAIRS if p not in present and _near(p, scenes) == near]
    return rng.choice(options) if options else None


def _count_color(k: int, rng: random.Random) -> QA:
    if k == 0:
        scene = sample_scene(rng)
        color = rng.choice([c for c in COLORS if c not in {o.color for o in scene.objects}])
        return make_qa("count_color", "0", (scene,), color=color, what=f"{color} shape")
    while True:  # k objects of one colour (distinct shapes), the others of other colours
        scene = sample_scene(rng, rng.randint(k, 4))
        color, chosen = rng.choice(list(COLORS)), rng.sample(range(len(scene.objects)), k)
        shapes = rng.sample(SHAPES, k)
        changes = {i: {"color": color, "shape": s} for i, s in zip(chosen, shapes)}
        for i, o in enumerate(scene.objects):
            if i not in chosen and o.color == color:
                changes[i] = {"color": rng.choice([c for c in COLORS if c != color])}
        if (new := restyle(scene, changes, rng)) is not None:
            return make_qa("count_color", str(k), (new,), color=color, what=f"{color} shape")


def _by_attribute(kind: str, want: str, rng: random.Random) -> QA:
    """color / shape / position / size with the given key: an allowed object picked uniformly, then restyled
    (colour, shape) or the scene drawn again (position, size) until it has the key."""
    while True:
        scene = sample_scene(rng)
        objs = scene.objects
        if kind == "color":
            ok = [i for i, o in enumerate(objs) if sum(p.shape == o.shape for p in objs) == 1]
        elif kind == "shape":
            ok = [i for i, o in enumerate(objs) if sum(p.color == o.color for p in objs) == 1]
        else:
            ok = list(range(len(objs)))
        if not ok:
            continue
        i = rng.choice(ok)
        if kind in ("color", "shape"):
            scene = restyle(scene, {i: {kind: want}}, rng)
            if scene is None:
                continue
            o = scene.objects[i]
            return make_qa(kind, want, (scene,), **({"shape": o.shape} if kind == "color" else {"color": o.color}))
        o = objs[i]
        if (o.position if kind == "position" else o.size) == want:
            return make_qa(kind, want, (scene,), color=o.color, shape=o.shape)


def absent_qa(scene: Scene, want: str, rng: random.Random) -> QA | None:
    """A question about an object the scene does not hold. want: "color" (no object of that shape), "shape"
    (none of that colour), or "position"/"size" + ":near"/":far" (that colour+shape is missing; near: an
    object shares its colour or its shape). None where the scene allows no such question."""
    ask_kind, _, how = want.partition(":")
    if ask_kind == "color":
        options = [s for s in SHAPES if s not in {o.shape for o in scene.objects}]
        if not options:
            return None
        shape = rng.choice(options)
        return make_qa("absent", shape, (scene,), ask="color", shape=shape)
    if ask_kind == "shape":
        options = [c for c in COLORS if c not in {o.color for o in scene.objects}]
        if not options:
            return None
        color = rng.choice(options)
        return make_qa("absent", f"{color} object", (scene,), ask="shape", color=color)
    if ask_kind not in ("position", "size") or how not in ("near", "far"):
        raise ValueError(f"unknown absent question {want!r}; expected one of {sorted(set(CYCLES['absent']))}")
    pair = _missing_pair((scene,), how == "near", rng)
    if pair is None:
        return None
    return make_qa("absent", f"{pair[0]} {pair[1]}", (scene,), ask=ask_kind, color=pair[0], shape=pair[1])


def _two(kind: str, want: str, rng: random.Random) -> QA | None:
    if kind in ("compare_count", "which_has"):
        a, b = sample_scene_pair(rng, share=rng.random() < 0.5)
        if kind == "compare_count" and (len(a.objects) > len(b.objects)) != (want == "first"):
            a, b = b, a
        return ask_two(kind, a, b, rng, want)
    a, b = sample_scene_pair(rng, share=want == "yes")
    if want == "yes":
        return ask_two(kind, a, b, rng, "yes")
    if want == "no:one":
        options = sorted(a.pairs ^ b.pairs)
        pair = rng.choice(options) if options else None
    else:
        pair = _missing_pair((a, b), want == "no:near", rng)
    if pair is None:
        return None
    only = "first" if pair in a.pairs else "second" if pair in b.pairs else ""
    return make_qa(kind, "no", (a, b), color=pair[0], shape=pair[1], only=only)


def balanced_qa(kind: str, rng: random.Random, want: str | None = None) -> QA:
    """A question of `kind` ("absent" included) whose answer is `want`, one entry of CYCLES[kind] (None: one
    drawn at random). Every scene follows the contract; the same rng state gives the same question."""
    if kind not in CYCLES:
        raise ValueError(f"unknown question kind {kind!r}; expected one of {KINDS}")
    want = rng.choice(CYCLES[kind]) if want is None else want
    if want not in CYCLES[kind]:
        raise ValueError(f"{want!r} is not an answer of kind {kind!r}; expected one of {sorted(set(CYCLES[kind]))}")
    if kind == "count":
        scene = sample_scene(rng, int(want))
        return make_qa(kind, want, (scene,), what="shape")
    if kind == "count_color":
        return _count_color(int(want), rng)
    if kind in ("color", "shape", "position", "size"):
        return _by_attribute(kind, want, rng)
    while True:
        if kind == "exists":
            scene = sample_scene(rng)
            pair = rng.choice(scene.objects).pair if want == "yes" else _missing_pair((scene,), want == "no:near", rng)
            qa = None if pair is None else make_qa(kind, want.split(":")[0], (scene,), color=pair[0], shape=pair[1])
        elif kind == "caption":
            qa = ask("caption", sample_scene(rng), rng)
        elif kind == "absent":
            qa = absent_qa(sample_scene(rng), want, rng)
        else:
            qa = _two(kind, want, rng)
        if qa is not None:
            return qa
