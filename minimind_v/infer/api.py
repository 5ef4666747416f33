"""`minimind_v.load(path)`: a trained model you can ask about images, from Python.

    vlm = minimind_v.load("runs/quickstart")
    vlm.answer([Image.open("a.png")], "<image>\\nWhat color is the circle?")
    stream = vlm.stream_chat(messages, images)
    for piece in stream: print(piece, end="")            # whole characters, as they are decoded
    print(stream.completion_tokens, stream.tokens_per_second, stream.finish_reason)
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError

from ..data.chat import count_markers, encode_prompt
from .. import runs
from ..device import DtypeChoice, pick_device, resolve_dtype
from ..model.checkpoint import load_run
from ..model.vlm import MiniMindVLM
from .generate import GenerationConfig, check_fits, compile_decoding, generate
from .streaming import ChatStream


class VLMChat:
    """A model, its tokenizer and its image processor, ready to answer."""

    def __init__(self, model: MiniMindVLM, tokenizer: Any, device: torch.device | str = "cpu"):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = torch.device(device)
        self.stop_ids = [tokenizer.eos_token_id]  # <|im_end|> for ours and minimind-3v, </s> for MiniMind2-V
        self.pad_id = tokenizer.pad_token_id or 0

    def _prompt(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_prompt(self.tokenizer, messages, tokens_per_image=self.model.tokens_per_image,
                             image_token=self.model.cfg.image_token)

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor | None:
        pixels = self.preprocess(images)
        return None if pixels is None else pixels.to(self.device)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor | None:
        """PIL images -> the pixel tensor the encoder reads, on the CPU (stream_chat's `pixel_values`)."""
        if not images:
            return None
        for im in images:
            if not isinstance(im, Image.Image):
                raise TypeError(f"images must be PIL.Image.Image objects, got {type(im).__name__}")
        return self.model.vision.preprocess(images)

    def _gen(self, max_new_tokens: int, temperature: float, **kw: Any) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                stop_ids=list(self.stop_ids), **kw)

    @staticmethod
    def _check(images: list[Image.Image], text: str) -> None:
        n = count_markers(text)
        if n != len(images):
            raise ValueError(f"the question has {n} <image> markers but {len(images)} images were given; "
                             f"write one <image> per image")

    def answer(self, images: list[Image.Image], question: str, max_new_tokens: int = 64,
               temperature: float = 0.0, **gen: Any) -> str:
        """One question (with one <image> per image) -> the answer text. Greedy at temperature 0."""
        return self.answer_batch([(images, question)], max_new_tokens, temperature, **gen)[0]

    def answer_batch(self, items: list[tuple[list[Image.Image], str]], max_new_tokens: int = 64,
                     temperature: float = 0.0, **gen: Any) -> list[str]:
        """Several (images, question) pairs in one batched generation; same answers as one by one (within
        rounding when the weights are stored in half precision)."""
        prompts, images = [], []
        for ims, q in items:
            self._check(ims, q)
            prompts.append(self._prompt([{"role": "user", "content": q}]))
            images.extend(ims)
        out = generate(self.model, prompts, self._pixels(images), self._gen(max_new_tokens, temperature, **gen),
                       pad_id=self.pad_id)
        return [self.tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]

    def warm_up(self) -> None:
        """Generate a few throwaway tokens (never stopping early): with compile=True this is when the decoding
        step gets compiled, and recompiled for the lengths that change from step to step."""
        generate(self.model, [self._prompt([{"role": "user", "content": "Hello"}])], None,
                 GenerationConfig(max_new_tokens=4), pad_id=self.pad_id)

    @property
    def context_length(self) -> int:
        """Tokens the model can attend to: prompt + answer must fit."""
        return self.model.cfg.llm.max_seq_len

    def encode_chat(self, messages: list[dict[str, str]], n_images: int) -> list[int]:
        """Check a conversation against its images and return the prompt ids (ValueError names the problem)."""
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
        n = sum(count_markers(m["content"]) for m in messages if isinstance(m.get("content"), str))
        if n != n_images:
            raise ValueError(f"the conversation has {n} <image> markers but {n_images} images were given; "
                             f"write one <image> per image")
        return self._prompt(messages)

    def stream_chat(self, messages: list[dict[str, str]], images: list[Image.Image] | None = None,
                    max_new_tokens: int = 256, temperature: float = 0.0, *, stop: list[str] | None = None,
                    pixel_values: torch.Tensor | None = None, **gen: Any) -> ChatStream:
        """Multi-turn chat; iterate the result for text pieces as they are decoded. Pieces never split a UTF-8
        character. `stop` strings end the answer early and are left out of it. Everything is checked here,
        before the first token: a bad conversation or a prompt too long for the context raises ValueError.
        After iterating, the ChatStream holds the token counts, finish_reason and tokens_per_second.
        `pixel_values` (from preprocess) may stand in for `images` when they were prepared elsewhere."""
        if pixel_values is None:
            pixel_values = self._pixels(images or [])
        else:
            pixel_values = pixel_values.to(self.device)
        prompt = self.encode_chat(messages, 0 if pixel_values is None else pixel_values.shape[0])
        cfg = self._gen(max_new_tokens, temperature, **gen)
        check_fits(len(prompt), cfg.max_new_tokens, self.context_length)
        return ChatStream(self.model, self.tokenizer, prompt, pixel_values, cfg, self.pad_id, stop)


def load(path: str | Path, device: str = "auto", weights: str = "fp32", encoder_weights: str | None = None,
         compile: bool = False, adapter: str | Path | None = None) -> VLMChat:
    """Load a run directory written by training (or by import) and return a VLMChat.

    weights="bf16" (or "fp16") keeps the weights in half precision: half the memory, faster decoding at
    batch 1 on CPU, answers within rounding of float32 (see model/half.py). weights="int8" stores the LLM's
    linear layers as int8 rows with a scale each: a quarter of the bytes, the fastest decoding on CPU, answers
    that may differ slightly from float32. encoder_weights defaults to the same. compile=True compiles the decoding
    step (infer/generate.py: compile_decoding): faster answers once the first one has paid for it.
    adapter: a LoRA adapter folder trained on this run, folded into the weights at load (model/lora.py).
    weights="auto" (what the commands default to) measures: bf16 where bf16 products are clearly faster
    than fp32 on this device (device.choose_dtype), else fp32; the choice is printed to stderr."""
    dev = pick_device(device)
    choice = auto_weights(path, dev) if weights == "auto" else None
    try:
        model, tok = load_run(path, dev, weights=choice.weights if choice else weights,
                              encoder_weights=encoder_weights, adapter=adapter)
    except SafetensorError as e:  # a truncated or corrupt weights file: name it, no traceback
        raise ValueError(f"the weights in {str(path)!r} cannot be read (a corrupt or incomplete .safetensors "
                         f"file?): {e}") from None
    if choice:  # said once the model has loaded, so an error stays the only line a failed load prints
        print(f"weights {choice.weights} ({choice.describe()})", file=sys.stderr, flush=True)
    if compile:
        compile_decoding(model)
    return VLMChat(model, tok, dev)


def auto_weights(path: str | Path, device: torch.device) -> DtypeChoice:
    """The probe's choice for --weights auto, for the run's shapes (`.weights` is the decoder's storage)."""
    llm = runs.read_config(Path(path))[0].llm
    return resolve_dtype("auto", device, llm.dim, llm.ffn_dim or llm.moe_ffn_dim)
