"""`minimind-v train ...`: the real-scale recipe, one stage per command (the quickstart is `minimind_v/quickstart.py`)."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from ..config import ATTENTION_KINDS, IMAGE_MARKER, options_from

if TYPE_CHECKING:
    from .stage import StageOptions

from ..arguments import device_name, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    _add_train_parser(sub)


STAGE_HELP = {
    "llm-pretrain": "pretrain the language model on text JSON-lines {\"text\": ...}",
    "llm-sft": "instruction-tune the language model on chat rows {\"conversations\": [...]}",
    "pretrain": "VLM alignment on image-caption rows (default: only the projector trains)",
    "sft": "VLM instruction tuning (default: projector + first and last LLM layers train)",
}


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="the real-scale recipe: tokenizer, LLM pretrain/SFT, VLM pretrain/SFT")
    tsub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)

    t = tsub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on text or chat JSON-lines")
    t.add_argument("--data", required=True, help="JSON-lines with `text` or `conversations` (or parquet)")
    t.add_argument("--out", required=True, help="tokenizer directory to write")
    t.add_argument("--vocab-size", type=int, default=6400)
    t.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    t.set_defaults(func=run_tokenizer)

    for stage, help_text in STAGE_HELP.items():
        s = tsub.add_parser(stage, help=help_text)
        _add_stage_data_args(s, stage)
        _add_stage_schedule_args(s)
        s.set_defaults(func=run_train)



def _add_stage_data_args(s: argparse.ArgumentParser, stage: str) -> None:
    """What a stage reads, starts from and trains."""
    s.add_argument("--data", required=True, help=".jsonl, .parquet (file or folder), or a saved datasets folder")
    s.add_argument("--images", default=None, help="image folder of a .jsonl dataset (default: beside it)")
    s.add_argument("--unmarked-images", choices=["text", "error"], default="text",
                   help="a row whose images no <image> marker uses (MiniMind-V's text-only rows with a placeholder "
                        "image): train it as text (default) or reject it as placeholder_mismatch")
    s.add_argument("--out", required=True, help="run directory to write")
    s.add_argument("--val-data", default=None,
                   help="held-out rows (same formats): their loss every --eval-every steps and at the end, in "
                        "metrics.jsonl (val_loss), the progress bar and loss.png")
    s.add_argument("--eval-every", type=int, default=200, help="steps between validation losses")
    s.add_argument("--val-batches", type=int, default=20, help="validation batches used (in order)")
    s.add_argument("--from", dest="from_run", default=None,
                   help="start from this run directory (an LLM run for llm-*, a VLM run for pretrain/sft)")
    if stage == "llm-pretrain":
        s.add_argument("--tokenizer", default=None, help="tokenizer directory (for a fresh LLM)")
        s.add_argument("--preset", default="minimind2-small", help="LLM size preset for a fresh LLM")
    if stage != "llm-pretrain":
        s.add_argument("--lora-rank", type=int, default=0,
                       help="train a LoRA adapter of this rank instead of the weights (needs --from); only "
                            "the adapter is saved: adapter.safetensors + adapter_config.json")
        s.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale numerator (scale = alpha/rank)")
        s.add_argument("--lora-targets", default="q,k,v,o,gate,up,down",
                       help="comma list of q,k,v,o,gate,up,down,projector")
    if stage in ("pretrain", "sft"):
        s.add_argument("--train-vision", type=int, default=0,
                       help="also train the vision encoder: -1 all of it, N its last N layers (0: frozen, the "
                            "default); its weights are then saved in the run; not with --feature-cache")
        s.add_argument("--lr-vision", type=float, default=0.0, help="the encoder's learning rate (default --lr)")
        s.add_argument("--from-llm", default=None, help="an LLM (or VLM) run whose language model to start from")
        s.add_argument("--image-token", default=None,
                       help="the image placeholder token of a VLM built --from-llm (default <|image_pad|>; "
                            "MiniMind2's tokenizer: @, as MiniMind2-V)")
        s.add_argument("--vision", default="siglip2-b32", help="encoder recipe: siglip2-b32 | clip-b16")
        s.add_argument("--vision-path", default=None, help="local folder of the pretrained encoder")
        s.add_argument("--merge", type=int, default=1, help="k x k pixel-shuffle token merge (1 = off)")
        s.add_argument("--projector", default=None, choices=["linear", "mlp"], help="override the recipe's")
        s.add_argument("--attention", default="causal", choices=ATTENTION_KINDS,
                       help="causal (MiniMind-V) or turn: a user turn's image and words see each other")
        s.add_argument("--image-slots", type=int, default=0,
                       help="learned embeddings telling a sample's 1st, 2nd, ... image apart (0: none, as MiniMind-V)")
        s.add_argument("--freeze-llm", type=int, default=None, choices=[0, 1, 2],
                       help="0: whole LLM trains; 1: first + last layer; 2: projector only")
        s.add_argument("--feature-cache", default=None,
                       help="folder caching the frozen encoder's features (computed once, reused)")
        s.add_argument("--lr-projector", type=float, default=0.0, help="projector learning rate (0 = --lr)")


def _add_stage_schedule_args(s: argparse.ArgumentParser) -> None:
    """How long and how a stage trains, and where it runs."""
    s.add_argument("--steps", type=positive_int, default=0, help="optimizer steps (default: from --epochs)")
    s.add_argument("--epochs", type=float, default=0, help="epochs (0: the stage's default)")
    s.add_argument("--batch-size", type=positive_int, default=0,
                   help="samples per micro-batch per process (default: the stage's)")
    s.add_argument("--accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    s.add_argument("--max-len", type=int, default=0, help="maximum tokens per sample (longer rows skip)")
    s.add_argument("--lr", type=float, default=0.0, help="peak learning rate (0: the stage's default)")
    s.add_argument("--lr-llm", type=float, default=0.0, help="LLM learning rate (0 = --lr)")
    s.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of lr")
    s.add_argument("--warmup", type=int, default=0)
    s.add_argument("--weight-decay", type=float, default=0.01)
    s.add_argument("--grad-clip", type=float, default=1.0)
    s.add_argument("--pack", action="store_true", help="pack several samples per row (no cross-attention)")
    s.add_argument("--group-by-length", action="store_true", help="batch rows of similar length together")
    s.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision (auto: bf16 on a CUDA GPU that has it or a CPU measured to run bf16 matmuls clearly faster, else fp32)")
    s.add_argument("--compile", action="store_true", help="torch.compile the decoder blocks")
    s.add_argument("--device", type=device_name, default="auto",
                   help="auto, cpu, cuda, mps (under torchrun: one GPU per rank)")
    s.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    s.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--log-every", type=int, default=10)
    s.add_argument("--log-to", default="", help="tensorboard and/or wandb (comma-separated; optional extras)")
    s.add_argument("--save-every", type=int, default=500, help="steps between resumable checkpoints")
    s.add_argument("--resume", action="store_true", help="continue from OUT/resume.safetensors")

def stage_options(args: argparse.Namespace) -> StageOptions:
    """The command line's arguments as the stage's options."""
    from .stage import StageOptions

    return options_from(StageOptions, args)


def run_train(args: argparse.Namespace) -> int:
    from .stage import run_stage

    try:
        run_stage(stage_options(args))
    except KeyboardInterrupt as e:
        print(f"minimind-v train {args.stage}: {e or 'interrupted'}")
        return 130
    return 0


def run_tokenizer(args: argparse.Namespace) -> int:
    from ..data.formats import BadRow, SampleReader, parse_conversations
    from ..data.tokenizer import train_tokenizer

    reader = SampleReader(args.data)
    n = min(len(reader), args.limit) if args.limit else len(reader)

    def texts():
        for i in range(n):
            try:
                row = reader.rows[i]
            except BadRow:
                continue
            if isinstance(row.get("text"), str):
                yield row["text"]
                continue
            try:
                convs = parse_conversations(row.get("conversations"))
            except BadRow:
                continue
            yield from (m["content"].replace(IMAGE_MARKER, " ") for m in convs if isinstance(m["content"], str))

    tok = train_tokenizer(texts(), vocab_size=args.vocab_size, out_dir=args.out)
    print(json.dumps({"out": args.out, "vocab": len(tok), "rows": n}))
    return 0
