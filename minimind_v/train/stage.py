"""One stage of the real-scale recipe, from its options to a run directory.

    tokenizer -> llm-pretrain -> llm-sft -> pretrain (VLM alignment) -> sft (VLM instructions)

Each stage builds its model (fresh, or from the previous stage's run), decides what trains, reads its dataset
lazily with broken rows skipped, and hands everything to the one training loop. Re-running the same command
with `--resume` continues from the run's `resume.safetensors` exactly where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from ..config import IMAGE_TOKEN, VLMConfig, llm_preset, padded_vocab
from ..data.batches import PackCollate, PadCollate
from ..data.encode import SampleEncoder
from ..data.feature_cache import CachedSampleEncoder, FeatureCache, FeatureFiller, encoder_key
from ..data.formats import SampleReader
from ..data.robust import RowDataset, SkipCollate, TextEncoder
from ..data.tokenizer import attention_fields, load_tokenizer
from ..device import DtypeChoice, pick_device, resolve_dtype
from ..model.checkpoint import load_llm_weights, load_run, save_llm_run, save_run
from ..model.lora import LoraConfig, apply_lora, base_hash, save_adapter
from ..model.vlm import MiniMindVLM
from ..runs import VISION_DIR, read_llm, write_folder, write_text
from .distributed import close_distributed, init_distributed
from .freeze import apply_freeze
from .lm_only import LMOnly, load_llm_run
from .loader import EpochLoader
from .plots import plot_metrics
from .recipes import STAGE_DEFAULTS, vision_recipe
from .resume import STATE_FILE
from .trainer import TrainConfig, train
from .validation import Validator

LLM_STAGES = ("llm-pretrain", "llm-sft")
VLM_STAGES = ("pretrain", "sft")


@dataclass
class StageOptions:
    """Everything one stage needs. 0 / None means "the stage's default" (recipes.STAGE_DEFAULTS)."""

    stage: str  # llm-pretrain | llm-sft | pretrain | sft
    data: str
    out: str
    images: str | None = None  # image folder of a .jsonl dataset (default: beside it)
    unmarked_images: str = "text"  # a row whose images no <image> marker uses: "text" (train it text-only) | "error"
    from_run: str | None = None  # continue from a run of the same kind (an LLM run for llm-*, a VLM run else)
    # a fresh LLM (llm-pretrain)
    tokenizer: str | None = None
    preset: str = "minimind2-small"
    # a VLM built from an LLM run (pretrain / sft)
    from_llm: str | None = None
    vision: str = "siglip2-b32"  # encoder recipe: siglip2-b32 | clip-b16
    vision_path: str | None = None
    image_token: str | None = None  # the placeholder; None: <|image_pad|> (MiniMind2's tokenizer has none: use @)
    merge: int = 1
    attention: str = "causal"  # causal | turn (config.VLMConfig.attention): for a VLM built --from-llm
    image_slots: int = 0  # learned "which image" embeddings (config.VLMConfig.image_slots): for a VLM built --from-llm
    projector: str | None = None  # None: the recipe's
    freeze_llm: int | None = None  # 0 whole LLM, 1 first + last layer, 2 projector only; None: the stage's
    feature_cache: str | None = None
    lr_projector: float = 0.0
    train_vision: int = 0  # 0: the encoder stays frozen; -1: all of it trains; N: its last N layers
    lr_vision: float = 0.0
    # LoRA (model/lora.py): rank 0 trains the weights themselves; > 0 trains and saves only an adapter
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = "q,k,v,o,gate,up,down"  # and/or projector
    # validation: the loss on rows of another file every eval_every steps and at the end
    val_data: str | None = None
    eval_every: int = 200
    val_batches: int = 20
    # the schedule
    steps: int = 0  # 0: from epochs
    epochs: float = 0
    batch_size: int = 0
    accum: int = 1
    max_len: int = 0
    lr: float = 0.0
    lr_llm: float = 0.0
    min_lr_ratio: float = 0.1
    warmup: int = 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # how batches are made and where it runs
    pack: bool = False
    group_by_length: bool = False
    dtype: str = "auto"  # auto: bf16 where it is measured to be clearly faster (device.choose_dtype)
    compile: bool = False
    device: str = "auto"
    workers: int = 2
    threads: int = 0
    seed: int = 0
    log_every: int = 10
    log_to: str = ""
    save_every: int = 500
    resume: bool = False

    def __post_init__(self) -> None:
        if self.stage not in LLM_STAGES + VLM_STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of: {', '.join(LLM_STAGES + VLM_STAGES)}")


def build_model(opts: StageOptions, say: Callable[[str], None]) -> tuple[torch.nn.Module, Any]:
    """The stage's starting model and tokenizer."""
    stage = opts.stage
    if stage in LLM_STAGES:
        if opts.from_run:
            return load_llm_run(opts.from_run)
        if stage == "llm-sft":
            raise ValueError("llm-sft starts from a pretrained LLM: pass --from RUN_DIR (an llm-pretrain run)")
        if not opts.tokenizer:
            raise ValueError("llm-pretrain needs --tokenizer DIR (make one with `minimind-v train tokenizer`)")
        tok = load_tokenizer(opts.tokenizer)
        vocab = padded_vocab(len(tok))
        return LMOnly(llm_preset(opts.preset, vocab_size=vocab)), tok
    if opts.from_run:  # continue from a VLM run (e.g. sft after pretrain)
        model, tok = load_run(opts.from_run)
        return model.train(), tok
    if not opts.from_llm:
        raise ValueError(f"{stage} needs --from-llm RUN_DIR (an LLM run) or --from RUN_DIR (a VLM run)")
    if not opts.vision_path:
        raise ValueError("a VLM built from an LLM needs --vision-path DIR (a local CLIP or SigLIP folder)")
    recipe = vision_recipe(opts.vision)
    llm_cfg, weights = read_llm(opts.from_llm)
    tok = load_tokenizer(opts.from_llm)
    image_token = opts.image_token or IMAGE_TOKEN
    image_id = placeholder_id(tok, image_token)
    cfg = VLMConfig(llm=llm_cfg, vision=recipe.vision_config(str(Path(opts.vision_path).resolve()), opts.merge),
                    projector=opts.projector or recipe.projector, image_token=image_token, image_token_id=image_id,
                    image_slots=opts.image_slots, **attention_fields(tok, opts.attention))
    model = MiniMindVLM(cfg)
    load_llm_weights(model.llm, weights, opts.from_llm)
    if model.tokens_per_image != recipe.tokens(opts.merge):
        say(f"note: the encoder at {opts.vision_path} gives {model.tokens_per_image} tokens per image; the "
            f"{opts.vision} recipe expects {recipe.tokens(opts.merge)} (a different model size?)")
    return model, tok


def save_tuned_encoder(model: MiniMindVLM, tok: Any, out: Path, extra: dict[str, Any]) -> None:
    """A run whose pretrained encoder was fine-tuned: the encoder's new weights go into the run's vision/."""
    write_folder(out / VISION_DIR, model.vision.save_pretrained)
    save_run(model, tok, out, extra={**extra, "vision_trained": True}, encoder_in_run=True)


def lora_config(opts: StageOptions) -> LoraConfig | None:
    """The LoRA settings, or None; an adapter adapts a complete model, so it needs --from."""
    if not opts.lora_rank:
        return None
    if not opts.from_run:
        raise ValueError("--lora-rank adapts a complete model: pass --from RUN (a LoRA adapter cannot hold the new "
                         "weights of a fresh LLM or projector)")
    return LoraConfig(opts.lora_rank, opts.lora_alpha, tuple(t.strip() for t in opts.lora_targets.split(",")))


def placeholder_id(tok: Any, token: str) -> int:
    """The id of the image placeholder, which must be one token that never merges with a copy of itself."""
    ids = tok(token * 3, add_special_tokens=False)["input_ids"]
    if len(ids) != 3 or len(set(ids)) != 1 or ids[0] == tok.unk_token_id:
        hint = " (MiniMind2's tokenizer has no <|image_pad|>: MiniMind2-V uses --image-token @)" \
            if token == IMAGE_TOKEN else ""
        raise ValueError(f"the LLM's tokenizer does not encode the image placeholder {token!r} as one token per "
                         f"copy{hint}; pass --image-token with a token it has")
    return int(ids[0])


def build_dataset(opts: StageOptions, data: str, model: torch.nn.Module, tok: Any, max_len: int,
                  cache: bool = True) -> tuple[RowDataset, FeatureFiller | None, SampleReader]:
    """The stage's rows of `data` as a dataset (with the feature cache's filler when one is used)."""
    reader = SampleReader(data, image_dir=opts.images, unmarked_images=opts.unmarked_images)
    filler = None
    if opts.stage == "llm-pretrain":
        ds = RowDataset(reader, TextEncoder(tok, max_len), kind="text")
    elif opts.stage == "llm-sft":
        ds = RowDataset(reader, SampleEncoder(tok, _no_images, 1, max_len=max_len))
    elif opts.feature_cache and cache:
        if not model.cfg.vision.freeze:
            raise ValueError("--feature-cache needs a frozen encoder (its features must not change)")
        cache = FeatureCache(opts.feature_cache, encoder_key(model.vision))
        enc = CachedSampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, model.vision.out_dim, cache,
                                  model.cfg.image_token, max_len)
        ds = RowDataset(reader, enc, decode=False)
        filler = FeatureFiller(model.vision, cache)
    else:
        ds = RowDataset(reader, SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image,
                                              model.cfg.image_token, max_len))
    return ds, filler, reader


def build_loader(opts: StageOptions, model: torch.nn.Module, tok: Any, max_len: int, batch: int,
                 rank: int, world: int) -> tuple[EpochLoader, FeatureFiller | None]:
    ds, filler, reader = build_dataset(opts, opts.data, model, tok, max_len)
    inner = PackCollate(max_len) if opts.pack else PadCollate()
    lengths = reader.approx_lengths() if opts.group_by_length else None
    loader = EpochLoader(ds, batch, collate_fn=SkipCollate(pad_id=tok.pad_token_id or 0, inner=inner),
                         seed=opts.seed, rank=rank, world=world, workers=opts.workers, blocks=reader.blocks(),
                         lengths=lengths, pin_memory=torch.cuda.is_available())
    return loader, filler


def build_validator(opts: StageOptions, model: torch.nn.Module, tok: Any, max_len: int, batch: int,
                    device: torch.device, dtype: str) -> Validator | None:
    """The validation loss on --val-data (its first --val-batches batches, in order), or None."""
    if not opts.val_data:
        return None
    ds, _, _ = build_dataset(opts, opts.val_data, model, tok, max_len, cache=False)
    collate = SkipCollate(pad_id=tok.pad_token_id or 0, inner=PackCollate(max_len) if opts.pack else PadCollate())
    return Validator(lambda: DataLoader(ds, batch_size=batch, shuffle=False, collate_fn=collate), device, dtype,
                     max_batches=opts.val_batches)


def _no_images(images: list) -> torch.Tensor:
    raise ValueError("an LLM stage got a row with images")


def stage_dtype(opts: StageOptions, model: torch.nn.Module, device: torch.device, dist: Any) -> DtypeChoice:
    """The autocast precision: as asked, else the one the run being resumed used, else measured (the probe).

    Every process must train in the same precision: bf16 only where all of them measured it faster."""
    if opts.dtype == "auto" and opts.resume and (Path(opts.out) / "stage.json").is_file():
        before = json.loads((Path(opts.out) / "stage.json").read_text())["train"]["dtype"]
        return DtypeChoice(before, reason="the precision of the run being resumed")
    cfg = model.llm.cfg
    choice = resolve_dtype(opts.dtype, device, cfg.dim, cfg.ffn_dim or cfg.moe_ffn_dim)
    agree = dist.all_sum(torch.tensor([int(choice.dtype == "bf16")], device=device))
    if int(agree[0]) not in (0, dist.world):
        choice = DtypeChoice("fp32", reason="bf16 was measured faster by only some of the processes")
    return choice


def run_stage(opts: StageOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    d = STAGE_DEFAULTS[opts.stage]
    dist, dist_device = init_distributed(opts.device)
    threads = torch.get_num_threads()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    try:
        device = dist_device or pick_device(opts.device)
        out = Path(opts.out)
        if opts.resume and not (out / STATE_FILE).is_file():
            raise FileNotFoundError(f"--resume: {str(out / STATE_FILE)!r} does not exist")
        torch.manual_seed(opts.seed)  # the same initial weights on every process
        lora = lora_config(opts)
        model, tok = build_model(opts, say if dist.main else lambda s: None)
        vlm = isinstance(model, MiniMindVLM)
        freeze = d.freeze_llm if opts.freeze_llm is None else opts.freeze_llm
        train_vision = True if opts.train_vision == -1 else opts.train_vision
        if opts.train_vision and not vlm:
            raise ValueError("--train-vision is for the VLM stages (pretrain, sft)")
        counts = apply_freeze(model, freeze, train_vision) if vlm else \
            {"llm": sum(p.numel() for p in model.parameters())}
        if lora:
            base = base_hash(model)
            counts = {"lora": apply_lora(model, lora)}
        max_len = opts.max_len or d.max_len
        batch = opts.batch_size or d.batch_size
        loader, filler = build_loader(opts, model, tok, max_len, batch, dist.rank, dist.world)
        steps = opts.steps or math.ceil((opts.epochs or d.epochs) * loader.per_epoch / opts.accum)
        choice = stage_dtype(opts, model, device, dist)
        dtype = choice.dtype
        cfg = TrainConfig(steps=steps, batch_size=batch, lr=opts.lr or d.lr, min_lr_ratio=opts.min_lr_ratio,
                          warmup=opts.warmup, weight_decay=opts.weight_decay, grad_clip=opts.grad_clip, dtype=dtype,
                          log_every=opts.log_every, seed=opts.seed, accum=opts.accum, lr_projector=opts.lr_projector,
                          lr_vision=opts.lr_vision,
                          lr_llm=opts.lr_llm, save_every=opts.save_every, compile=opts.compile)
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
            say(f"{opts.stage}: {len(loader.dataset)} rows, {steps} steps x {batch} x {opts.accum} accum x "
                f"{dist.world} processes on {device} ({dtype}); trainable {counts}; max_len {max_len}"
                f"{'; packed' if opts.pack else ''}")
            say(choice.describe())
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(choice.row(stage=opts.stage)) + "\n")
            write_text(out / "stage.json", json.dumps({"stage": opts.stage, "args": dataclasses.asdict(opts),
                                                       "train": dataclasses.asdict(cfg)}, indent=2, default=str))
        extra = {"stage": opts.stage, "source": str(opts.from_run or opts.from_llm or opts.tokenizer or "")}

        def export(m: torch.nn.Module) -> None:
            if lora:
                save_adapter(m, lora, out, base)
            elif vlm and opts.train_vision and not m.cfg.vision.trained_here:
                save_tuned_encoder(m, tok, out, extra)
            else:
                save_run(m, tok, out, extra=extra) if vlm else save_llm_run(m.llm, tok, out, extra=extra)

        t0 = time.time()
        validate = build_validator(opts, model, tok, max_len, batch, device, dtype) if dist.main else None
        rows = train(model, loader, cfg, device=device, metrics_path=out / "metrics.jsonl", stage=opts.stage,
                     run_dir=out, resume=opts.resume, dist=dist, export=export, prepare=filler, log_to=opts.log_to,
                     validate=validate, eval_every=opts.eval_every)
        result = {"run_dir": str(out), "steps": steps, "seconds": round(time.time() - t0, 1),
                  "final_loss": rows[-1]["loss"] if rows else None}
        if filler is not None:
            result["feature_cache"] = {"hits": filler.hits, "misses": filler.misses}
        if dist.main:
            plot_metrics(out / "metrics.jsonl", out / "loss.png")
            say(f"done: {result}")
        return result
    finally:
        torch.set_num_threads(threads)
        close_distributed()
