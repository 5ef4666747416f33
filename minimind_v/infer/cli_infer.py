"""`minimind-v ask` (one question), `chat` (a conversation on stdin) and `caption` (every image of a folder)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from PIL import Image, UnidentifiedImageError

from ..arguments import device_name, port_number, positive_int
from ..config import IMAGE_MARKER
from ..data.chat import count_markers

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CHAT_HELP = "commands: /image PATH (attach to your next message), /reset (forget everything), /exit"


def open_image(path: str | Path) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        im = Image.open(p)
        im.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"image {str(path)!r} could not be read: {e}") from None
    return im.convert("RGB")


def with_markers(text: str, n_images: int) -> str:
    """Put one `<image>` line per image in front of the text unless the text places its own markers."""
    if IMAGE_MARKER in text:
        return text
    return f"{IMAGE_MARKER}\n" * n_images + text


def add_server_arguments(p: argparse.ArgumentParser, port: int, model_help: str) -> None:
    """--model / --host / --port / --device and the loading switches: what `serve` and `web` share."""
    p.add_argument("--model", action="append", required=True, help=model_help)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    p.add_argument("--port", type=port_number, default=port)
    p.add_argument("--device", type=device_name, default="auto")
    add_loading_arguments(p)


def add_loading_arguments(p: argparse.ArgumentParser) -> None:
    """--weights / --encoder-weights / --compile, for every command that loads a model to answer with."""
    p.add_argument("--weights", choices=["auto", "fp32", "bf16", "fp16", "int8"], default="auto",
                   help="weight storage: bf16/fp16 halve the memory and speed up decoding at batch 1 "
                        "(activations stay fp32); int8 stores the LLM's linear layers in a quarter of the bytes "
                        "(per-row scales; answers may differ slightly); auto: bf16 where bf16 matmuls are "
                        "measured clearly faster than fp32, else fp32")
    p.add_argument("--encoder-weights", choices=["fp32", "bf16", "fp16", "int8"], default=None,
                   help="the vision encoder's weight storage (default: as --weights, once auto is decided); int8 takes a quarter of fp32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decoding step: faster answers after a first one that compiles (~1 min)")
    p.add_argument("--adapter", default=None,
                   help="a LoRA adapter folder trained on the model (train ... --lora-rank R), applied at load")


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", type=device_name, default="auto")
    add_loading_arguments(p)


def sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask one question about images")
    p.add_argument("--model", required=True, help="run directory")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--video", help="a video (animated GIF / WebP / PNG; mp4 and others with PyAV installed): its "
                                   "frames are sampled evenly and sent as images after any --image")
    p.add_argument("--frames", type=positive_int, default=8,
                   help="frames to sample from --video (default 8; the quickstart model is trained on 3 to 5)")
    add_sampling_args(p, 64)
    p.add_argument("question", help="the question; '<image>\\n' per image is prepended when missing")
    p.set_defaults(func=ask)

    p = sub.add_parser("chat", help="chat with a model on the terminal (or piped stdin), with images")
    p.add_argument("--model", required=True, help="run directory")
    add_sampling_args(p, 256)
    p.set_defaults(func=chat)

    p = sub.add_parser("caption", help="caption every image in a folder")
    p.add_argument("folder", help="folder of images (.png .jpg .jpeg .bmp .gif .webp .tif)")
    p.add_argument("--model", required=True, help="run directory")
    p.add_argument("--prompt", default="Describe the image.", help="what to ask about each image")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--jsonl", action="store_true", help='print {"file": ..., "caption": ...} lines')
    add_sampling_args(p, 64)
    p.set_defaults(func=caption)


def ask(args: argparse.Namespace) -> int:
    from .api import load

    images = [open_image(p) for p in args.image]
    if args.video:  # a video is its frames, sent as images in time order
        from ..data.video import read_frames

        images += read_frames(args.video, args.frames)
    q = with_markers(args.question.replace("\\n", "\n"), len(images))
    vlm = load(args.model, device=args.device, weights=args.weights, encoder_weights=args.encoder_weights,
               adapter=args.adapter, compile=args.compile)
    print(vlm.answer(images, q, **sampling(args)))
    return 0


class ChatSession:
    """The conversation so far, its images in order, and the images waiting for the next message."""

    def __init__(self, vlm: Any, gen: dict[str, Any], out: TextIO, err: TextIO):
        self.vlm, self.gen, self.out, self.err = vlm, gen, out, err
        self.messages: list[dict[str, str]] = []
        self.images: list[Image.Image] = []
        self.pending: list[Image.Image] = []

    def handle(self, line: str) -> bool:
        """One line of input; False once the user asked to leave."""
        line = line.strip()
        if not line:
            return True
        if line in ("/exit", "/quit"):
            return False
        if line == "/reset":
            self.messages, self.images, self.pending = [], [], []
            print("(conversation cleared)", file=self.err)
        elif line.startswith("/image"):
            self.attach(line[len("/image"):].strip())
        elif line.startswith("/"):
            print(f"unknown command {line.split()[0]!r}; {CHAT_HELP}", file=self.err)
        else:
            self.say(line.replace("\\n", "\n"))
        return True

    def attach(self, path: str) -> None:
        try:
            self.pending.append(open_image(path))
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=self.err)
            return
        print(f"(image {len(self.pending)} attached; it goes with your next message)", file=self.err)

    def say(self, text: str) -> None:
        text = with_markers(text, len(self.pending))
        if count_markers(text) != len(self.pending):
            print(f"error: the message has {count_markers(text)} {IMAGE_MARKER} markers but "
                  f"{len(self.pending)} images are attached", file=self.err)
            return
        self.messages.append({"role": "user", "content": text})
        self.images += self.pending
        self.pending = []
        try:
            self._fit()
            stream = self.vlm.stream_chat(self.messages, self.images, **self.gen)
        except ValueError as e:
            print(f"error: {e}", file=self.err)
            self._drop_last()
            return
        for piece in stream:
            print(piece, end="", file=self.out, flush=True)
        print(file=self.out, flush=True)
        print(f"[{stream.completion_tokens} tokens, {stream.tokens_per_second:.1f} tokens/s, "
              f"{stream.finish_reason}]", file=self.err, flush=True)
        answer = stream.text.strip()
        if answer:
            self.messages.append({"role": "assistant", "content": answer})
        else:  # an empty assistant turn cannot be encoded again: forget this exchange
            print("(empty answer; this turn is not kept)", file=self.err)
            self._drop_last()

    def _fit(self) -> None:
        """Forget the oldest exchanges (and their images) until prompt + answer fit the context."""
        budget = self.vlm.context_length - self.gen["max_new_tokens"]
        while len(self.vlm.encode_chat(self.messages, len(self.images))) > budget and len(self.messages) > 2:
            for m in self.messages[:2]:
                del self.images[:count_markers(m["content"])]
            self.messages = self.messages[2:]
            print("(context full: forgot the oldest exchange)", file=self.err)

    def _drop_last(self) -> None:
        last = self.messages.pop()
        n = count_markers(last["content"])
        if n:
            del self.images[-n:]


def chat(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    from .api import load

    stdin = stdin or sys.stdin
    vlm = load(args.model, device=args.device, weights=args.weights, encoder_weights=args.encoder_weights,
               adapter=args.adapter, compile=args.compile)
    session = ChatSession(vlm, sampling(args), sys.stdout, sys.stderr)
    interactive = stdin.isatty()
    if interactive:
        print(f"chatting with {args.model}; {CHAT_HELP}", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = stdin.readline()
        if not line or not session.handle(line):
            return 0


def caption(args: argparse.Namespace) -> int:
    from .api import load

    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{args.folder!r} is not a folder")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"no images ({' '.join(sorted(IMAGE_SUFFIXES))}) in {args.folder!r}")
    vlm = load(args.model, device=args.device, weights=args.weights, encoder_weights=args.encoder_weights,
               adapter=args.adapter, compile=args.compile)
    question = with_markers(args.prompt, 1)
    done = skipped = 0
    batch: list[tuple[Path, Image.Image]] = []

    def flush() -> None:
        answers = vlm.answer_batch([([im], question) for _, im in batch], **sampling(args))
        for (path, _), text in zip(batch, answers):
            print(json.dumps({"file": path.name, "caption": text}) if args.jsonl else f"{path.name}\t{text}",
                  flush=True)
        batch.clear()

    for path in files:
        try:
            batch.append((path, open_image(path)))
        except ValueError as e:
            skipped += 1
            print(f"skipped {path.name}: {e}", file=sys.stderr)
            continue
        done += 1
        if len(batch) == args.batch_size:
            flush()
    if batch:
        flush()
    print(f"captioned {done} images, skipped {skipped} unreadable", file=sys.stderr)
    return 0 if done else 1
