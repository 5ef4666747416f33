"""`minimind-v bench`: how fast a model trains and decodes, and how much memory it takes.

Training is timed exactly as the trainer runs it (`trainer.lm_loss`, AdamW, clipping, autocast), one phase at a
time: data (read + tokenise + image preprocessing + collate, in this process), vision (the encoder's forward),
LLM forward (projector + splice + decoder + loss), backward, optimizer. Every figure is reported as
min / median / max over `repeats` groups of `steps` steps, after `warmup` steps.

Model FLOPs utilisation: the FLOPs that eval/flops.py counts (attention's T^2 term left out, so MFU is slightly
understated) over real (non-padding) tokens: compute spent on padding is waste and lowers MFU. The peak is
`--peak-tflops`, or else a matmul measured here in the same dtype.
`mfu` divides by the whole step; `mfu_model` leaves the data phase out (in training, DataLoader workers overlap it).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..config import VisionConfig, VLMConfig, llm_preset
from ..data.chat import encode_conversation
from ..data.collate import SampleEncoder
from ..data.packing import PackCollate, PadCollate
from ..data.synthetic import random_image
from ..infer.generate import compile_decoding
from ..model.vlm import MiniMindVLM
from ..train.loader import EpochLoader
from ..train.stages import apply_freeze
from ..device import autocast, pick_device
from ..train.trainer import (
    TrainConfig,
    lm_loss,
    make_optimizer,
    to_device,
)
from .decode_bench import bench_decode, inference_rss_of, weights_label, with_weights
from .flops import device_name, flops_per_step, matmul_peak_tflops, summary, sync
from .memory import PeakMemory

WORDS = ("the a red blue green small large round square cat dog car tree house sky cloud sun river road bird "
         "flower picture shows there is an with on in of and near under over bright dark shape left right").split()


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="shapes-tiny", help="LLM preset (see config.LLM_PRESETS)")
    p.add_argument("--model", default=None, help="bench an existing run directory instead of a fresh preset")
    p.add_argument("--vision", default="scratch",
                   help="'scratch' (the embedded encoder) or a local CLIP/SigLIP folder (frozen, as in the reference)")
    p.add_argument("--projector", default="mlp", choices=["mlp", "linear"])
    p.add_argument("--data", default=None, help="parquet / JSON-lines set to read (default: synthetic rows)")
    p.add_argument("--words", default="20,120", help="synthetic answers: min,max words")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-len", type=int, default=256, help="longer samples are cut here, as the reference does")
    p.add_argument("--group-by-length", action="store_true",
                   help="the trainer's length-grouped order: batches of similar lengths, little padding")
    p.add_argument("--pack", action="store_true", help="pack each batch's samples into rows of --max-len")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each decoder block for training (as the trainer can) and the decoding step")
    p.add_argument("--fused-adamw", action="store_true",
                   help="the trainer's AdamW groups with fused=True (one kernel per tensor; the trainer already fuses on CUDA and CPU)")
    p.add_argument("--freeze-llm", type=int, default=0, choices=[0, 1, 2])
    p.add_argument("--dtype", action="append", choices=["fp32", "bf16", "fp16"],
                   help="repeatable; default fp32, plus bf16 when the device runs bf16 matmuls at full speed")
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="training steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--decode-batch", type=int, default=8, help="the batched decoding figure's batch size")
    p.add_argument("--weights", action="append", choices=["fp32", "bf16", "fp16"],
                   help="decode: weight storage, repeatable (default fp32); bf16/fp16 keep activations fp32")
    p.add_argument("--encoder-weights", choices=["fp32", "bf16", "fp16", "int8"], default=None,
                   help="decode: the vision encoder's weight storage (default: as each --weights)")
    p.add_argument("--rss", action="store_true",
                   help="decode: also the peak RSS of a fresh process that loads the model and answers once")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU (else measured)")
    p.add_argument("--only", default="train,decode", help="comma list of: train, decode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON here")


# ------------------------------------------------------------------------------------------------------------
# What is measured on: a model and a stream of samples.


def build_model(preset: str, vision: str, projector: str, max_len: int, seed: int = 0) -> MiniMindVLM:
    """A fresh model: the preset's decoder and either the embedded encoder or a local pretrained one."""
    llm = llm_preset(preset)
    llm = llm_preset(preset, max_seq_len=max(llm.max_seq_len, max_len))
    if vision == "scratch":
        vcfg = VisionConfig()
    else:
        cfg_file = Path(vision) / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"--vision {vision!r} is neither 'scratch' nor an encoder folder with config.json")
        kind = "siglip" if json.loads(cfg_file.read_text()).get("model_type", "").startswith("siglip") else "clip"
        vcfg = VisionConfig(kind=kind, path=str(vision))
    torch.manual_seed(seed)
    return MiniMindVLM(VLMConfig(llm=llm, vision=vcfg, projector=projector))


def synthetic_samples(n: int, words: tuple[int, int], image_size: int, seed: int = 0) -> list[dict[str, Any]]:
    """Describe-the-picture conversations on random shapes, answers of words[0]..words[1] words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        im = random_image(rng, image_size, n_shapes=(2, 6))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) + "."
        out.append({"conversations": [{"role": "user", "content": "<image>\nDescribe this image."},
                                      {"role": "assistant", "content": answer}], "images": [im]})
    return out


class CutEncoder(SampleEncoder):
    """SampleEncoder that cuts a too-long conversation at max_len (as the reference does) instead of refusing it.

    Only benchmarks use this: cutting is safe here because the image run comes first in every sample."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        ids, labels = encode_conversation(self.tokenizer, sample["conversations"],
                                          tokens_per_image=self.tokens_per_image, image_token=self.image_token)
        out = {"input_ids": torch.tensor(ids[:self.max_len]), "labels": torch.tensor(labels[:self.max_len])}
        if sample.get("images"):
            out["pixel_values"] = self.preprocess(sample["images"])
        return out


class EncodedRows(torch.utils.data.Dataset):
    """rows[i] through the encoder: what the trainer's RowDataset does, minus its skipping of broken rows."""

    def __init__(self, rows: Any, encode: Callable[[dict[str, Any]], dict[str, torch.Tensor]]):
        self.rows, self.encode = rows, encode

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.encode(self.rows[int(i)])


# ------------------------------------------------------------------------------------------------------------
# The two measurements.


def bench_train(model: MiniMindVLM, batches: Iterator[dict[str, Any]], *, device: torch.device, dtype: str,
                warmup: int, steps: int, repeats: int, peak_tflops: float | None, batch_size: int,
                fused_adamw: bool = False) -> dict[str, Any]:
    """Time `warmup + steps * repeats` training steps; `batch_size` samples per step (packed rows hold several)."""
    model.to(device).train()
    opt = make_optimizer(model, TrainConfig(lr=1e-4))
    if fused_adamw and not opt.defaults.get("fused"):
        keep = ("lr", "betas", "eps", "weight_decay", "amsgrad")
        opt = torch.optim.AdamW(opt.param_groups, fused=True, **{k: opt.defaults[k] for k in keep})
    frozen_vision = not any(p.requires_grad for p in model.vision.parameters())
    groups: list[list[dict[str, float]]] = []
    shapes = []
    for step in range(warmup + steps * repeats):
        t0 = time.perf_counter()
        batch = to_device(next(batches), device)
        sync(device)
        t1 = time.perf_counter()
        with autocast(device, dtype):
            if "pixel_values" in batch:  # the encoder runs here, timed on its own; the trainer's loss then
                with torch.set_grad_enabled(not frozen_vision):  # takes its features as a feature cache's
                    batch["vision_feats"] = model.vision(batch.pop("pixel_values"))
            sync(device)
            t2 = time.perf_counter()
            loss, aux = lm_loss(model, batch)
            total = loss + aux
        sync(device)
        t3 = time.perf_counter()
        total.backward()
        sync(device)
        t4 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        t5 = time.perf_counter()
        if step < warmup:
            continue
        if (step - warmup) % steps == 0:
            groups.append([])
        shapes.append(list(batch["input_ids"].shape))
        groups[-1].append({"data_s": t1 - t0, "vision_s": t2 - t1, "llm_forward_s": t3 - t2, "backward_s": t4 - t3,
                           "optimizer_s": t5 - t4, "step_s": t5 - t0, "samples": batch_size,
                           "tokens": int(batch["attention_mask"].sum()), "padded_tokens": batch["input_ids"].numel(),
                           "flops": flops_per_step(model, batch), "loss": loss.item()})
    per_repeat: dict[str, list[float]] = {k: [] for k in ("samples_per_s", "tokens_per_s", "padded_tokens_per_s",
                                                          "step_s", "data_s", "vision_s", "llm_forward_s",
                                                          "backward_s", "optimizer_s", "achieved_tflops",
                                                          "achieved_tflops_model")}
    for g in groups:
        wall = sum(r["step_s"] for r in g)
        per_repeat["samples_per_s"].append(sum(r["samples"] for r in g) / wall)
        per_repeat["tokens_per_s"].append(sum(r["tokens"] for r in g) / wall)
        per_repeat["padded_tokens_per_s"].append(sum(r["padded_tokens"] for r in g) / wall)
        per_repeat["achieved_tflops"].append(sum(r["flops"] for r in g) / wall / 1e12)
        # the trainer's DataLoader workers prepare batches in parallel: the model's own share excludes data time
        model_wall = wall - sum(r["data_s"] for r in g)
        per_repeat["achieved_tflops_model"].append(sum(r["flops"] for r in g) / model_wall / 1e12)
        for k in ("step_s", "data_s", "vision_s", "llm_forward_s", "backward_s", "optimizer_s"):
            per_repeat[k].append(sum(r[k] for r in g) / len(g))
    out: dict[str, Any] = {k: summary(v, 6 if k.startswith("achieved") else 4) for k, v in per_repeat.items()}
    if peak_tflops:
        out["mfu"] = summary([t / peak_tflops for t in per_repeat["achieved_tflops"]])
        out["mfu_model"] = summary([t / peak_tflops for t in per_repeat["achieved_tflops_model"]])
    out["samples_per_min"] = summary([60 * s for s in per_repeat["samples_per_s"]], 2)
    out["optimizer"] = "AdamW" + (" fused" if opt.defaults.get("fused") else "")
    out["batch_shapes"] = shapes
    out["last_loss"] = round(groups[-1][-1]["loss"], 4)
    return out


# ------------------------------------------------------------------------------------------------------------
# Putting it together.


def _tokenizer_for(rows: Any, n: int, vocab_size: int) -> Any:
    from ..data.tokenizer import train_tokenizer

    texts = [m["content"] for i in range(min(n, len(rows))) for m in _record(rows, i)["conversations"]]
    return train_tokenizer(texts, vocab_size=vocab_size)


def _record(rows: Any, i: int) -> dict[str, Any]:
    return rows.record(i) if hasattr(rows, "record") else rows[i]


def bench_from_args(a: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    sections = {s.strip() for s in a.only.split(",") if s.strip()}
    if not sections or sections - {"train", "decode"}:
        raise ValueError(f"--only takes a comma list of train, decode; got {a.only!r}")
    mem = PeakMemory(device)
    if a.model:
        from ..model.checkpoint import load_run

        model, tok = load_run(a.model, "cpu")
    else:
        model, tok = build_model(a.preset, a.vision, a.projector, a.max_len, a.seed), None
    loaded = mem.read()
    peaks = {dt: (a.peak_tflops or matmul_peak_tflops(device, dt)) for dt in (a.dtype or ["fp32", "bf16"])
             if dt != "fp16" or device.type == "cuda"}
    dtypes = a.dtype or ["fp32"] + (["bf16"] if peaks.get("bf16", 0) >= 0.5 * peaks["fp32"] else [])
    res: dict[str, Any] = {
        "env": {"torch": torch.__version__, "device": device_name(device), "threads": torch.get_num_threads(),
                "python": platform.python_version()},
        "config": {k: v for k, v in vars(a).items() if k not in ("func", "command")},
        "params_M": {"llm": round(model.llm.num_parameters() / 1e6, 3),
                     "projector": round(sum(p.numel() for p in model.projector.parameters()) / 1e6, 3),
                     "vision": round(sum(p.numel() for p in model.vision.parameters()) / 1e6, 3)},
        "peak_tflops": {k: round(v, 4) for k, v in peaks.items()},
        "peak_source": "--peak-tflops" if a.peak_tflops else "measured matmul",
        "dtypes": dtypes,
        "memory_mb": {"after_load": loaded},
    }
    if "bf16" not in dtypes and "bf16" in peaks and not a.dtype:
        res["bf16_skipped"] = (f"bf16 matmuls run at {peaks['bf16'] * 1e3:.1f} GFLOPS here against "
                               f"{peaks['fp32'] * 1e3:.1f} in fp32: no native bf16 on this device")
    if "train" in sections:
        if a.data:
            from ..data.formats import SampleReader

            rows: Any = SampleReader(a.data)
        else:
            lo, hi = (int(x) for x in a.words.split(","))
            rows = synthetic_samples(a.batch_size * max(4, a.steps), (lo, hi), model.vision.image_size, a.seed)
        tok = tok or _tokenizer_for(rows, 400, model.cfg.llm.vocab_size)
        if len(tok) > model.cfg.llm.vocab_size:
            raise ValueError(f"tokenizer has {len(tok)} tokens, more than the model's vocabulary")
        apply_freeze(model, a.freeze_llm)
        if a.compile:
            for layer in model.llm.layers:
                layer.compile(dynamic=True)
        enc = CutEncoder(tok, model.vision.preprocess, model.tokens_per_image, model.cfg.image_token, a.max_len)
        lengths = None
        if a.group_by_length:
            lengths = [min(a.max_len, len(encode_conversation(tok, _record(rows, i)["conversations"],
                                                              tokens_per_image=model.tokens_per_image,
                                                              image_token=model.cfg.image_token)[0]))
                       for i in range(len(rows))]
        # Without grouping, rows are read in file order: the reference reads the same rows the same way.
        loader = EpochLoader(EncodedRows(rows, enc), a.batch_size, seed=a.seed, shuffle=a.group_by_length,
                             lengths=lengths, collate_fn=PackCollate(a.max_len) if a.pack else PadCollate())
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        res["train"] = {}
        for dt in dtypes:
            model.load_state_dict(init)  # every dtype starts from the same weights
            mem.reset()
            r = bench_train(model, loader.batches(), device=device, dtype=dt, warmup=a.warmup, steps=a.steps,
                            repeats=a.repeats, peak_tflops=peaks.get(dt), batch_size=a.batch_size,
                            fused_adamw=a.fused_adamw)
            r["peak_memory_mb"] = mem.read()
            res["train"][dt] = r
    if "decode" in sections:
        if tok is None:
            rows = synthetic_samples(64, (20, 120), model.vision.image_size, a.seed)
            tok = _tokenizer_for(rows, 64, model.cfg.llm.vocab_size)
        res["decode"] = {}
        for w in a.weights or ["fp32"]:
            m, label = with_weights(model, w, a.encoder_weights), weights_label(w, a.encoder_weights)
            if a.compile:  # the first (warm-up) run of each batch size pays for the compilation
                compile_decoding(m)
            for dt in dtypes if label == "fp32" else ["fp32"]:  # low-precision weights compute in fp32
                mem.reset()
                r = bench_decode(m, tok, device=device, dtype=dt, new_tokens=a.decode_tokens,
                                 batch_sizes=sorted({1, a.decode_batch}), repeats=a.repeats,
                                 image_size=model.vision.image_size)
                r["peak_memory_mb"] = mem.read()
                res["decode"][dt if label == "fp32" else f"{label}_weights"] = r
        if a.rss and device.type == "cpu":
            res["inference_rss"] = inference_rss_of(model, tok, a.weights or ["fp32"], a.encoder_weights,
                                                    a.decode_tokens)
    return res
