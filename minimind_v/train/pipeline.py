"""One stage of the real-scale recipe, from command-line options to a run directory.

    tokenizer -> llm-pretrain -> llm-sft -> pretrain (VLM alignment) -> sft (VLM instructions)

Each stage builds its model (fresh, or from the previous stage's run), decides what trains, reads its dataset
lazily with broken rows skipped, and hands everything to the one training loop. Re-running the same command
with `--resume` continues from the run's `resume.safetensors` exactly where it stopped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import VLMConfig, llm_preset, padded_vocab
from ..data.collate import SampleEncoder
from ..data.feature_cache import CachedSampleEncoder, FeatureCache, FeatureFiller, encoder_key
from ..data.formats import SampleReader
from ..data.packing import PackCollate, PadCollate
from ..data.robust import RowDataset, SkipCollate, TextEncoder
from ..data.tokenizer import load_tokenizer
from ..device import pick_device
from ..model.checkpoint import load_llm_weights, load_run, save_llm_run, save_run
from ..model.vlm import MiniMindVLM
from ..runs import read_llm
from .distributed import close_distributed, init_distributed
from .llm_stages import LMOnly, load_llm_run
from .loader import EpochLoader
from .recipes import STAGE_DEFAULTS, vision_recipe
from .resume import STATE_FILE
from .stages import apply_freeze
from .trainer import TrainConfig, train

LLM_STAGES = ("llm-pretrain", "llm-sft")


def build_model(args: argparse.Namespace, say: Callable[[str], None]) -> tuple[torch.nn.Module, Any]:
    """The stage's starting model and tokenizer."""
    stage = args.stage
    if stage in LLM_STAGES:
        if args.from_run:
            return load_llm_run(args.from_run)
        if stage == "llm-sft":
            raise ValueError("llm-sft starts from a pretrained LLM: pass --from RUN_DIR (an llm-pretrain run)")
        if not args.tokenizer:
            raise ValueError("llm-pretrain needs --tokenizer DIR (make one with `minimind-v train tokenizer`)")
        tok = load_tokenizer(args.tokenizer)
        vocab = padded_vocab(len(tok))
        return LMOnly(llm_preset(args.preset, vocab_size=vocab)), tok
    if args.from_run:  # continue from a VLM run (e.g. sft after pretrain)
        model, tok = load_run(args.from_run)
        return model.train(), tok
    if not args.from_llm:
        raise ValueError(f"{stage} needs --from-llm RUN_DIR (an LLM run) or --from RUN_DIR (a VLM run)")
    if not args.vision_path:
        raise ValueError("a VLM built from an LLM needs --vision-path DIR (a local CLIP or SigLIP folder)")
    recipe = vision_recipe(args.vision)
    llm_cfg, weights = read_llm(args.from_llm)
    tok = load_tokenizer(args.from_llm)
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    if image_id is None or image_id == tok.unk_token_id:
        raise ValueError("the LLM's tokenizer has no <|image_pad|> token")
    cfg = VLMConfig(llm=llm_cfg, vision=recipe.vision_config(str(Path(args.vision_path).resolve()), args.merge),
                    projector=args.projector or recipe.projector, image_token_id=image_id)
    model = MiniMindVLM(cfg)
    load_llm_weights(model.llm, weights, args.from_llm)
    if model.tokens_per_image != recipe.tokens(args.merge):
        say(f"note: the encoder at {args.vision_path} gives {model.tokens_per_image} tokens per image; the "
            f"{args.vision} recipe expects {recipe.tokens(args.merge)} (a different model size?)")
    return model, tok


def build_loader(args: argparse.Namespace, model: torch.nn.Module, tok: Any, max_len: int, batch: int,
                 rank: int, world: int) -> tuple[EpochLoader, FeatureFiller | None]:
    reader = SampleReader(args.data, image_dir=args.images)
    filler = None
    if args.stage == "llm-pretrain":
        ds = RowDataset(reader, TextEncoder(tok, max_len), kind="text")
    elif args.stage == "llm-sft":
        ds = RowDataset(reader, SampleEncoder(tok, _no_images, 1, max_len=max_len))
    elif args.feature_cache:
        if not model.cfg.vision.freeze:
            raise ValueError("--feature-cache needs a frozen encoder (its features must not change)")
        cache = FeatureCache(args.feature_cache, encoder_key(model.vision))
        enc = CachedSampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, model.vision.out_dim, cache,
                                  model.cfg.image_token, max_len)
        ds = RowDataset(reader, enc, decode=False)
        filler = FeatureFiller(model.vision, cache)
    else:
        ds = RowDataset(reader, SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image,
                                              model.cfg.image_token, max_len))
    inner = PackCollate(max_len) if args.pack else PadCollate()
    lengths = reader.approx_lengths() if args.group_by_length else None
    loader = EpochLoader(ds, batch, collate_fn=SkipCollate(pad_id=tok.pad_token_id or 0, inner=inner),
                         seed=args.seed, rank=rank, world=world, workers=args.workers, blocks=reader.blocks(),
                         lengths=lengths, pin_memory=torch.cuda.is_available())
    return loader, filler


def _no_images(images: list) -> torch.Tensor:
    raise ValueError("an LLM stage got a row with images")


def run_stage(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    d = STAGE_DEFAULTS[args.stage]
    dist, dist_device = init_distributed(args.device)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = dist_device or pick_device(args.device)
        out = Path(args.out)
        if args.resume and not (out / STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume: {str(out / STATE_FILE)!r} does not exist")
        torch.manual_seed(args.seed)  # the same initial weights on every process
        model, tok = build_model(args, say if dist.main else lambda s: None)
        vlm = isinstance(model, MiniMindVLM)
        freeze = d.freeze_llm if args.freeze_llm is None else args.freeze_llm
        counts = apply_freeze(model, freeze) if vlm else {"llm": sum(p.numel() for p in model.parameters())}
        max_len = args.max_len or d.max_len
        batch = args.batch_size or d.batch_size
        loader, filler = build_loader(args, model, tok, max_len, batch, dist.rank, dist.world)
        steps = args.steps or math.ceil((args.epochs or d.epochs) * loader.per_epoch / args.accum)
        dtype = args.dtype
        if dtype == "auto":
            dtype = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        cfg = TrainConfig(steps=steps, batch_size=batch, lr=args.lr or d.lr, min_lr_ratio=args.min_lr_ratio,
                          warmup=args.warmup, weight_decay=args.weight_decay, grad_clip=args.grad_clip, dtype=dtype,
                          log_every=args.log_every, seed=args.seed, accum=args.accum, lr_projector=args.lr_projector,
                          lr_llm=args.lr_llm, lr_vision=0.0, save_every=args.save_every, compile=args.compile)
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            say(f"{args.stage}: {len(loader.dataset)} rows, {steps} steps x {batch} x {args.accum} accum x "
                f"{dist.world} processes on {device} ({dtype}); trainable {counts}; max_len {max_len}"
                f"{'; packed' if args.pack else ''}")
            (out / "stage.json").write_text(json.dumps({"stage": args.stage, "args": vars(args) | {"func": None},
                                                        "train": dataclasses.asdict(cfg)}, indent=2, default=str))
        extra = {"stage": args.stage, "source": str(args.from_run or args.from_llm or args.tokenizer or "")}

        def export(m: torch.nn.Module) -> None:
            save_run(m, tok, out, extra=extra) if vlm else save_llm_run(m.llm, tok, out, extra=extra)

        t0 = time.time()
        rows = train(model, loader, cfg, device=device, metrics_path=out / "metrics.jsonl", stage=args.stage,
                     run_dir=out, resume=args.resume, dist=dist, export=export, prepare=filler, log_to=args.log_to)
        result = {"run_dir": str(out), "steps": steps, "seconds": round(time.time() - t0, 1),
                  "final_loss": rows[-1]["loss"] if rows else None}
        if filler is not None:
            result["feature_cache"] = {"hits": filler.hits, "misses": filler.misses}
        if dist.main:
            say(f"done: {result}")
        return result
    finally:
        torch.set_num_threads(threads)
        close_distributed()
