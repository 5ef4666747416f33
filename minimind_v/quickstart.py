"""`minimind-v quickstart`: the whole path on the embedded default, a recipe over every layer of the package:
data -> tokenizer -> vision -> pretrain -> SFT -> save -> evaluate.

    minimind-v quickstart                 # the default recipe, about 15 minutes on 2 CPU cores
    minimind-v quickstart --preset smoke  # the same path in under a minute (what the tests run)
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .arguments import device_name, positive_int
from .config import ATTENTION_KINDS, IMAGE_MARKER, IMAGE_TOKEN, VisionConfig, VLMConfig, llm_preset, padded_vocab
from .data.batches import PackCollate
from .data.chatmix import MixWeights, make_sample
from .data.encode import SampleEncoder
from .data.shapes_dataset import ShapesWorldDataset
from .data.tokenizer import attention_fields, train_tokenizer
from .data.world import STAGE_SEED_BLOCK, TOKENIZER_CORPUS_SEED
from .device import pick_device, resolve_dtype
from .eval.grid import draw_grid, pick_examples
from .eval.shapes import evaluate_shapes, report_markdown
from .infer.api import VLMChat
from .model.checkpoint import save_run
from .model.vlm import MiniMindVLM
from .train.freeze import apply_freeze
from .train.plots import plot_metrics
from .train.trainer import TrainConfig, train
from .train.vision_pretrain import pretrain_vision, probe_vision


@dataclass
class QuickstartConfig:
    llm_preset: str = "shapes"
    vocab_size: int = 1024
    vision: VisionConfig = field(default_factory=lambda: VisionConfig(kind="cnn", image_size=96, width=128, layers=1,
                                                                      merge=2))
    tokenizer_samples: int = 3000
    vision_steps: int = 350
    vision_batch: int = 64
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(steps=100, batch_size=32, lr=2e-3, warmup=20))
    # ground_weight: one head learns where a binding question's object is (train/grounding.py)
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1300, batch_size=32, lr=2e-3, warmup=50,
                                                                 ground_weight=1.0, ground_heads=(0, 2)))
    max_len: int = 256
    # "turn" lets an image's tokens read the question after them (config.VLMConfig.attention). In this recipe it did
    # not lift the binding kinds and lowered count_color (docs/quickstart.md), so the default stays MiniMind-V's.
    attention: str = "causal"
    image_slots: int = 8  # which image / frame a token belongs to (config.VLMConfig); clips have up to 5 frames
    mix: MixWeights = field(default_factory=MixWeights)  # the SFT mix (data/chatmix.py)
    eval_per_kind: int = 50
    eval_digits: int = 360  # the whole held-out digit split
    workers: int = 1
    dtype: str = "auto"  # autocast precision; auto: measured (device.choose_dtype)
    seed: int = 0  # training seed: the initial weights and every training scene (evaluation scenes never change)


QUICKSTART_PRESETS: dict[str, QuickstartConfig] = {
    "default": QuickstartConfig(),
    "smoke": QuickstartConfig(
        llm_preset="shapes-tiny", vocab_size=512, tokenizer_samples=300,
        vision=VisionConfig(kind="cnn", image_size=48, width=32, layers=1, merge=1),
        vision_steps=5, vision_batch=16,
        pretrain=TrainConfig(steps=5, batch_size=8, lr=2e-3),
        sft=TrainConfig(steps=10, batch_size=8, lr=2e-3, ground_weight=1.0),
        eval_per_kind=2, eval_digits=20, workers=0),
}


def corpus(n: int, seed: int = TOKENIZER_CORPUS_SEED) -> list[str]:
    """Text of n training conversations (every kind), for the tokenizer to learn its merges from."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        s = make_sample(rng, image_size=32, kinds="caption" if i % 4 == 0 else "sft")
        texts.extend(m["content"].replace(IMAGE_MARKER, " ") for m in s["conversations"])
    return texts


def stage_offset(seed: int, stage: int) -> int:
    """Where a stage's training samples start: each stage and each training seed reads its own stretch of
    training scenes (1e8 samples apart, far more than a stage draws)."""
    if seed < 0 or not 0 <= stage < 10:
        raise ValueError(f"seed must be >= 0 and stage in 0..9, got seed={seed}, stage={stage}")
    return seed * 10 * STAGE_SEED_BLOCK + (stage + 1) * STAGE_SEED_BLOCK


def loader(model: MiniMindVLM, tok: Any, cfg: TrainConfig, kinds: str, qs: QuickstartConfig,
           offset: int) -> DataLoader:
    enc = SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, model.cfg.image_token, qs.max_len)
    ds = ShapesWorldDataset(cfg.steps * cfg.batch_size, enc, kinds=kinds, image_size=qs.vision.image_size,
                            offset=offset, mix=qs.mix)
    # Packing: a batch's samples share rows of max_len tokens (attention and positions restart per sample),
    # so no compute is spent on padding; samples here are 20 to 200 tokens long.
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, collate_fn=PackCollate(qs.max_len),
                      num_workers=qs.workers, persistent_workers=False, prefetch_factor=4 if qs.workers else None)


def run_quickstart(out: str | Path, qs: QuickstartConfig, device: str = "auto", evaluate: bool = True,
                   say: Any = print) -> dict[str, Any]:
    run, dev, t0 = Path(out), pick_device(device), time.time()
    run.mkdir(parents=True, exist_ok=True)
    metrics = run / "metrics.jsonl"
    metrics.write_text("")
    torch.manual_seed(qs.seed)

    def log(row: dict[str, Any]) -> None:
        with open(metrics, "a") as f:
            f.write(json.dumps(row) + "\n")

    say(f"[1/6] tokenizer: byte-level BPE on {qs.tokenizer_samples} rendered conversations")
    tok = train_tokenizer(corpus(qs.tokenizer_samples), vocab_size=qs.vocab_size)
    vocab = padded_vocab(len(tok))
    cfg = VLMConfig(llm=llm_preset(qs.llm_preset, vocab_size=vocab), vision=dataclasses.replace(qs.vision),
                    image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), image_slots=qs.image_slots,
                    **attention_fields(tok, qs.attention))
    model = MiniMindVLM(cfg)
    say(f"      vocab {len(tok)}; LLM {model.llm.num_parameters() / 1e6:.2f}M params; encoder "
        f"{sum(p.numel() for p in model.vision.parameters()) / 1e6:.2f}M; {model.tokens_per_image} tokens/image")

    choice = resolve_dtype(qs.dtype, dev, cfg.llm.dim, cfg.llm.ffn_dim)
    say(f"      {choice.describe()}")
    log(choice.row(stage="setup"))

    say(f"[2/6] vision: the encoder learns to see ({qs.vision_steps} steps)")
    _, heads = pretrain_vision(model.vision, steps=qs.vision_steps, batch_size=qs.vision_batch, seed=qs.seed,
                               device=dev, log=log)
    probe = probe_vision(model.vision, heads, image_size=qs.vision.image_size)
    log({"stage": "vision_probe", **probe})
    say("      held-out per-object accuracy of the encoder's tokens: "
        + ", ".join(f"{k} {v:.3f}" for k, v in probe.items()))

    for i, (stage, tcfg, kinds) in enumerate([("pretrain", qs.pretrain, "caption"), ("sft", qs.sft, "sft")]):
        tcfg = dataclasses.replace(tcfg, dtype=choice.dtype)
        counts = apply_freeze(model, freeze_llm=0, train_vision=False)
        say(f"[{3 + i}/6] {stage}: {tcfg.steps} steps x {tcfg.batch_size}; trainable {counts}")
        dl = loader(model, tok, tcfg, kinds, qs, offset=stage_offset(qs.seed, i))
        train(model, dl, tcfg, device=dev, metrics_path=metrics, stage=stage)
        # Collect this stage's finished loader here: a next stage's forked worker would otherwise inherit it and
        # try to shut down workers that are not its own children when its garbage collector finds it.
        del dl
        gc.collect()

    model.eval()
    save_run(model, tok, run, extra={"train_seconds": round(time.time() - t0, 1)})
    plot_metrics(metrics, run / "loss.png")
    result: dict[str, Any] = {"run_dir": str(run), "train_seconds": round(time.time() - t0, 1)}
    say(f"[5/6] saved the model to {run} after {result['train_seconds']} s")
    if evaluate:
        result.update(_evaluate(model, tok, dev, qs, run, say))
    result["total_seconds"] = round(time.time() - t0, 1)
    say(f"done in {result['total_seconds']} s; run directory: {run}")
    return result


def _evaluate(model: MiniMindVLM, tok: Any, dev: torch.device, qs: QuickstartConfig, run: Path,
              say: Any) -> dict[str, Any]:
    """Held-out scenes and digits: a table per kind, eval.json / eval.md, a grid of examples, a few answers."""
    say(f"[6/6] evaluating on held-out seeds ({qs.eval_per_kind} per kind) and {qs.eval_digits} held-out digits")
    ev = evaluate_shapes(VLMChat(model, tok, dev), n_per_kind=qs.eval_per_kind, image_size=qs.vision.image_size,
                         n_digits=qs.eval_digits)
    (run / "eval.json").write_text(json.dumps({k: v for k, v in ev.items() if k != "items"}, indent=1))
    table = report_markdown(ev)
    (run / "eval.md").write_text(table + "\n")
    shown = [{**r, "images": it["images"], "expected": r["key"]} for r, it in zip(ev["rows"], ev["items"])]
    draw_grid([shown[i] for i in pick_examples(shown, 12)], run / "eval_grid.png")
    say(table)
    say(f"examples (pictures in {run / 'eval_grid.png'}):")
    seen: set[str] = set()
    for r in ev["rows"]:
        if r["kind"] not in seen:
            seen.add(r["kind"])
            say(f"  [{r['kind']}] {r['question'].replace(chr(10), ' ')} -> {r['answer']!r} "
                f"({'ok' if r['score'] >= 0.5 else 'wrong'}; expected {r['key']!r})")
    return {"summary": ev["summary"], "eval_seconds": ev["seconds"]}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train a VLM on the embedded shapes world, evaluate it, show answers")
    p.add_argument("--out", default="runs/quickstart", help="run directory to write (default: runs/quickstart)")
    p.add_argument("--preset", default="default", choices=sorted(QUICKSTART_PRESETS),
                   help="default: the full recipe (~15 min on 2 CPU cores); smoke: the same path in seconds")
    p.add_argument("--device", type=device_name, default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--dtype", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision (default auto: bf16 where measured clearly faster, else fp32)")
    p.add_argument("--sft-steps", type=positive_int, default=None, help="override the SFT step count")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers rendering the data")
    p.add_argument("--attention", default=None, choices=ATTENTION_KINDS,
                   help="causal (default, MiniMind-V) or turn: an image's tokens also read the question after them")
    p.add_argument("--seed", type=int, default=None,
                   help="training seed (default 0): initial weights and training scenes; the evaluation is unchanged")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    qs = dataclasses.replace(QUICKSTART_PRESETS[args.preset])
    if args.dtype:
        qs.dtype = args.dtype
    if args.sft_steps:
        qs.sft = dataclasses.replace(qs.sft, steps=args.sft_steps)
    if args.attention:
        qs.attention = args.attention
    if args.workers is not None:
        qs.workers = args.workers
    if args.seed is not None:
        if args.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {args.seed}")
        qs.seed = args.seed
    run_quickstart(args.out, qs, device=args.device, evaluate=not args.no_eval)
    return 0
