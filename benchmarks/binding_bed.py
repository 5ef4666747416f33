"""A fast test bed for binding: can a fresh LLM learn "What color is the {shape}?" on a trained, frozen encoder?

Binding (find an object by one attribute, read another) is the skill the quickstart's model lacks. This bed
isolates it: it keeps a trained run's frozen encoder, builds a fresh projector and LLM of the same config, and
trains them on one question only, then scores the colour token (teacher-forced "The {shape} is") on 300
held-out scenes of 2 to 4 objects drawn in the evaluation style. Chance is about 0.35 to 0.5 (the colours of
the scene's objects).

    python benchmarks/binding_bed.py --run runs/quickstart --steps 4000 --evals 500,1000,2000,3000,4000
    python benchmarks/binding_bed.py --run runs/quickstart --images-last ...   # each question before its image

--images-last puts the image after the question's words, so that the image tokens can attend to the question
(causal attention lets a token read only what came before it). --attention turn keeps the image first and lets
the tokens of its turn see each other instead (config.VLMConfig.attention).
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import time

import torch
from torch.utils.data import DataLoader, Dataset

from minimind_v.data.batches import PackCollate
from minimind_v.data.chatmix import EVAL_STYLE, make_sample
from minimind_v.data.encode import SampleEncoder
from minimind_v.data.grounding import question_objects
from minimind_v.config import ATTENTION_KINDS, LLMConfig
from minimind_v.data.tokenizer import attention_fields
from minimind_v.device import machine
from minimind_v.data.world import eval_seed, render, sample_scene, train_seed
from minimind_v.data.world_text import make_qa
from minimind_v.data.world_vocab import COLORS
from minimind_v.infer.api import VLMChat
from minimind_v.model.checkpoint import load_run
from minimind_v.model.vlm import MiniMindVLM
from minimind_v.train.freeze import apply_freeze
from minimind_v.train.trainer import TrainConfig, train


def images_last(conversation: list[dict]) -> list[dict]:
    """Move each user turn's leading <image> markers after its words."""
    out = []
    for m in conversation:
        if m["role"] == "user" and m["content"].startswith("<image>"):
            n = m["content"].count("<image>")
            m = {**m, "content": m["content"].replace("<image>\n", "").replace("<image>", "") + "\n" + "<image>" * n}
        out.append(m)
    return out


class ColorByShape(Dataset):
    def __init__(self, n: int, offset: int, encode, kinds: str, last: bool):
        self.n, self.offset, self.encode, self.kinds, self.last = n, offset, encode, kinds, last

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        rng = random.Random(train_seed(self.offset + i))
        if self.kinds == "color":
            scene = sample_scene(rng)
            o = rng.choice(scene.objects)
            sample = {"conversations": [{"role": "user", "content": f"<image>\nWhat color is the {o.shape}?"},
                                        {"role": "assistant", "content": f"The {o.shape} is {o.color}."}],
                      "images": [render(scene, 96, rng, jitter=True)],
                      "ground": [(0, *at) for at in question_objects(make_qa("color", o.color, (scene,),
                                                                                 shape=o.shape))]}
        else:  # a part of the SFT mix by name, e.g. "dialogue"
            sample = make_sample(rng, image_size=96, kinds=self.kinds)
        if self.last:
            sample = {**sample, "conversations": images_last(sample["conversations"])}
        return self.encode(sample)


@torch.no_grad()
def accuracy(model: MiniMindVLM, tok, last: bool, n: int = 300) -> tuple[float, float]:
    """(score on all n scenes, score on those where the asked shape is unique: the contract asks colour by
    shape only there; elsewhere another object of that shape may carry another colour)."""
    chat, colors = VLMChat(model, tok), list(COLORS)
    color_ids = [tok.encode(" " + c, add_special_tokens=False)[0] for c in colors]
    model.eval()
    rng, right, unique = random.Random(5), 0, []
    for i in range(n):
        scene = sample_scene(random.Random(eval_seed(777000 + i)), rng.randint(2, 4))
        o = rng.choice(scene.objects)
        image = render(scene, 96, rng, **EVAL_STYLE)
        q = f"What color is the {o.shape}?"
        ids = chat.encode_chat([{"role": "user", "content": q + "\n<image>" if last else "<image>\n" + q}], 1)
        ids += tok.encode(f"The {o.shape} is", add_special_tokens=False)
        logits = model(torch.tensor([ids]), chat.preprocess([image]), logits_to_keep=1).logits[0, -1]
        ok = colors[int(logits[color_ids].argmax())] == o.color
        right += ok
        if sum(p.shape == o.shape for p in scene.objects) == 1:
            unique.append(ok)
    model.train()
    return right / n, sum(unique) / len(unique)


def llm_overrides(llm: LLMConfig, pairs: list[str]) -> LLMConfig:
    """The LLM config with FIELD=VALUE pairs applied, each value read as its field's type."""
    kinds = {f.name: type(getattr(llm, f.name)) for f in dataclasses.fields(llm)}
    changes = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in kinds or not value:
            raise SystemExit(f"--llm {pair!r}: expected FIELD=VALUE with FIELD one of {sorted(kinds)}")
        kind = kinds[name]
        changes[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return dataclasses.replace(llm, **changes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a trained run whose frozen encoder and config are used")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--evals", default="500,1000,2000", help="steps at which to score")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kinds", default="color", help='"color" (the one question) or a part of the SFT mix')
    p.add_argument("--images-last", action="store_true", help="each user turn's images after its words")
    p.add_argument("--attention", default="causal", choices=ATTENTION_KINDS, help="the fresh model's attention")
    p.add_argument("--ground-weight", type=float, default=0.0,
                   help="grounding loss weight (train/grounding.py): one head learns where the asked object is")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="autocast precision of training")
    p.add_argument("--llm", action="append", default=[], metavar="FIELD=VALUE",
                   help="change a field of the fresh LLM's config, e.g. --llm n_kv_heads=6 (repeatable)")
    a = p.parse_args()
    name, flags = machine()
    print(f"CPU: {name}; flags: {' '.join(flags or []) or 'none of those the dtype probe reads'}")
    torch.manual_seed(0)
    base, tok = load_run(a.run)
    cfg = dataclasses.replace(base.cfg, llm=llm_overrides(base.cfg.llm, a.llm), **attention_fields(tok, a.attention))
    print(f"LLM: {cfg.llm}")
    model = MiniMindVLM(cfg, vision=base.vision)  # fresh projector + LLM, the run's encoder
    apply_freeze(model, freeze_llm=0, train_vision=False)
    encode = SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, max_len=256)
    done = 0
    for at in map(int, a.evals.split(",")):
        data = ColorByShape((at - done) * a.batch, 2 * 10**8 + done * a.batch, encode, a.kinds, a.images_last)
        cfg = TrainConfig(steps=at - done, batch_size=a.batch, lr=a.lr, warmup=20, log_every=50, dtype=a.dtype,
                          ground_weight=a.ground_weight)
        t0 = time.time()
        train(model, DataLoader(data, batch_size=a.batch, collate_fn=PackCollate(256), num_workers=1), cfg,
              device=torch.device("cpu"))
        done = at
        score, unique = accuracy(model, tok, a.images_last)
        print(f"kinds={a.kinds} images_last={a.images_last} attention={a.attention} ground_weight={a.ground_weight} "
              f"step={at} colour-by-shape={score:.3f} (asked shape unique: {unique:.3f}) "
              f"({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
