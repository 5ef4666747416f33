"""Where a wrong binding answer goes wrong: does the grounded head find the object, or is it read out wrong?

For a trained run, held-out questions of the binding kinds are asked with their expected answer teacher-forced.
At the first position that writes the answer, each grounded head's attention (recomputed from the layer's input,
as train/grounding.py does) is "on target" when its largest weight lies on a token the question is about
(data/grounding.py: the asked object's cell, "nowhere" for a missing one, every match for a colour count). The
answer is "right" when every answer token is the model's top prediction, a stricter test than `eval`'s, which
accepts any answer naming the right word. Reading both together says where the errors are: a head on target with
a wrong answer is a readout error; a head off target is a lookup error.

    python benchmarks/grounding_probe.py --run runs/quickstart --n 60
"""
from __future__ import annotations

import argparse
import random
from collections import Counter

import torch

from minimind_v.config import IMAGE_MARKER
from minimind_v.data.balanced import CYCLES, balanced_qa
from minimind_v.data.chatmix import EVAL_STYLE
from minimind_v.data.encode import SampleEncoder
from minimind_v.data.grounding import question_objects
from minimind_v.data.world import EVAL_KIND_SEED_BLOCK, eval_seed, render
from minimind_v.device import machine
from minimind_v.model.checkpoint import load_run
from minimind_v.model.vlm import MiniMindVLM
from minimind_v.train.grounding import head_attention, layer_input

KINDS = ("color", "shape", "exists", "position", "size", "count_color", "which_has", "both_have")
PROBE_SEED = 7  # a block of held-out scenes apart from `eval`'s (seed 0)


def probe_one(model: MiniMindVLM, enc: SampleEncoder, attn: torch.nn.Module, heads: tuple[int, ...], qa,
              images: list) -> tuple[bool, bool]:
    """(every head's largest attention weight is on a target, every answer token is the top prediction)."""
    conv = [{"role": "user", "content": IMAGE_MARKER * len(images) + qa.question},
            {"role": "assistant", "content": qa.answer}]
    out = enc({"conversations": conv, "images": images, "ground": [(0, i, c) for i, c in question_objects(qa)]})
    ids, labels, ground = out["input_ids"][None], out["labels"][None], out["ground"]
    with torch.no_grad(), layer_input(attn) as seen:
        hidden = model(ids, out["pixel_values"], logits_to_keep=0).hidden
        keep = labels[0, 1:] != -100
        right = bool((model.llm.lm_head(hidden[0, :-1][keep]).argmax(-1) == labels[0, 1:][keep]).all())
        query = int(ground[:, 0].min())
        targets = set(ground[ground[:, 0] == query, 1].tolist())
        on = [int(head_attention(attn, seen, 0, query, h).argmax()) in targets for h in heads]
    return all(on), right


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a trained run directory")
    p.add_argument("--n", type=int, default=60, help="questions per kind")
    p.add_argument("--heads", default="0,2", help="the grounded heads (the quickstart's: 0,2)")
    p.add_argument("--layer", type=int, default=-1, help="the grounded layer; -1: the middle one, as in training")
    a = p.parse_args()
    cpu, flags = machine()
    print(f"CPU: {cpu}; flags: {' '.join(flags)}")
    model, tok = load_run(a.run)
    layers = model.llm.layers
    attn = layers[len(layers) // 2 if a.layer < 0 else a.layer].attn
    heads = tuple(int(h) for h in a.heads.split(","))
    enc = SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, model.cfg.image_token, 256)
    print("| kind | n | head on target | answer right | right when on target | right when off target |")
    print("|---|---|---|---|---|---|")
    for k, kind in enumerate(KINDS):
        seen = Counter()
        for i in range(a.n):
            rng = random.Random(eval_seed((PROBE_SEED * 100 + k) * EVAL_KIND_SEED_BLOCK + i))
            qa = balanced_qa(kind, rng, CYCLES[kind][i % len(CYCLES[kind])])
            images = [render(s, model.vision.image_size, rng, **EVAL_STYLE) for s in qa.scenes]
            seen[probe_one(model, enc, attn, heads, qa, images)] += 1
        on, off = seen[True, True] + seen[True, False], seen[False, True] + seen[False, False]
        share = lambda x, y: f"{x / y:.2f}" if y else "-"  # noqa: E731
        print(f"| {kind} | {a.n} | {share(on, a.n)} | {share(seen[True, True] + seen[False, True], a.n)} | "
              f"{share(seen[True, True], on)} | {share(seen[False, True], off)} |", flush=True)


if __name__ == "__main__":
    main()
