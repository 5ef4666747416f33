"""`minimind-v bench`: how fast a model trains and decodes, and how much memory it takes.

Training is timed exactly as the trainer runs it (`trainer.lm_loss`, AdamW, clipping, autocast), one phase at a
time: data (read + tokenise + image preprocessing + collate, in this process), vision (the encoder's forward),
LLM forward (projector + splice + decoder + loss), backward, optimizer. Every figure is reported as
min / median / max over `repeats` groups of `steps` steps, after `warmup` steps.

Model FLOPs utilisation: the FLOPs that eval/flops.py counts (attention's T^2 term left out, so MFU is slightly
understated) over real (non-padding) tokens: compute spent on padding is waste and lowers MFU. The peak is
`--peak-tflops`, or else a matmul measured here in the same dtype.
`mfu` divides by the whole step; `mfu_model` leaves the data phase out (in training, DataLoader workers overlap it).
`efficiency` puts both beside the peak of the precision each dtype trained in (fp32's for fp32, bf16's for
bf16), and the command prints them in words on stderr.

Token counts depend on the tokenizer, so the JSON says which one was used (`tokenizer`) and how many real tokens
a sample holds (`data`, and `real_tokens_per_sample` per dtype trained). Without `--tokenizer` a fresh model gets
one trained on the benchmark rows themselves, which spends about one token per word: fewer tokens per sample than
a general tokenizer, so a comparison with another trainer should pass that trainer's tokenizer (`--tokenizer DIR`).
`--dtype auto` is the trainer's default: the precision the probe of device.choose_dtype picks for the model's shapes.
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config import IMAGE_TOKEN
from ..data.batches import PackCollate, PadCollate
from ..data.chat import encode_conversation
from ..data.tokenizer import CHAT_TEMPLATE
from ..device import autocast, pick_device, resolve_dtype, sync
from ..infer.generate import compile_decoding
from ..model.vlm import MiniMindVLM
from ..train.freeze import apply_freeze
from ..train.loader import EpochLoader
from ..train.optim import make_optimizer
from ..train.trainer import TrainConfig, lm_loss, to_device
from .bench_data import CutEncoder, EncodedRows, build_model, record, synthetic_samples, tokenizer_for
from .decode_bench import bench_decode, inference_rss_of, weights_label, with_weights
from .flops import device_name, efficiency, flops_per_step, matmul_peak_tflops, summary
from .memory import PeakMemory

STAT_ROWS = 2000  # rows whose token counts are reported (all of them when grouping needs every length)

@dataclass
class BenchOptions:
    """What `minimind-v bench` measures, on what (the command's flags, one field each)."""

    preset: str = "shapes-tiny"  # LLM preset (config.LLM_PRESETS)
    model: str | None = None  # bench an existing run directory instead of a fresh preset
    vision: str = "scratch"  # 'scratch' (the embedded encoder) or a local CLIP/SigLIP folder (frozen)
    projector: str = "mlp"
    data: str | None = None  # parquet / JSON-lines set to read (default: synthetic rows)
    words: str = "20,120"  # synthetic answers: min,max words
    batch_size: int = 4
    max_len: int = 256  # longer samples are cut here, as the reference does
    group_by_length: bool = False
    pack: bool = False
    compile: bool = False  # each decoder block for training, and the decoding step
    fused_adamw: bool = False
    freeze_llm: int = 0
    dtype: list[str] | None = None  # default fp32, plus bf16 when the device runs bf16 matmuls at full speed
    tokenizer: str | None = None  # a tokenizer folder for a fresh model (default: one trained on the rows)
    image_token: str | None = None  # the image placeholder in that tokenizer (default <|image_pad|>)
    device: str = "cpu"
    threads: int | None = None
    warmup: int = 1
    steps: int = 3  # training steps per repeat
    repeats: int = 3
    decode_tokens: int = 64
    decode_batch: int = 8
    weights: list[str] | None = None  # decode: weight storage (default fp32)
    encoder_weights: str | None = None  # decode: the encoder's weight storage (default: as each weights)
    rss: bool = False  # decode: also the peak RSS of a fresh process that loads the model and answers once
    peak_tflops: float | None = None  # the device's peak, for MFU (else measured)
    only: str = "train,decode"
    seed: int = 0
    out: str | None = None  # also write the JSON here


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
    timed = [r for g in groups for r in g]
    out["real_tokens_per_sample"] = round(sum(r["tokens"] for r in timed) / sum(r["samples"] for r in timed), 1)
    out["optimizer"] = "AdamW" + (" fused" if opt.defaults.get("fused") else "")
    out["batch_shapes"] = shapes
    out["last_loss"] = round(groups[-1][-1]["loss"], 4)
    return out


# ------------------------------------------------------------------------------------------------------------
# Putting it together.


def run_benchmarks(o: BenchOptions) -> dict[str, Any]:
    """Every figure `minimind-v bench` reports, as one JSON-able dict."""
    device = pick_device(o.device)
    if o.threads:
        torch.set_num_threads(o.threads)
    sections = {s.strip() for s in o.only.split(",") if s.strip()}
    if not sections or sections - {"train", "decode"}:
        raise ValueError(f"--only takes a comma list of train, decode; got {o.only!r}")
    mem = PeakMemory(device)
    model, tok, source = _model_and_tokenizer(o)
    loaded = mem.read()
    choice = None
    if o.dtype and "auto" in o.dtype:  # the trainer's default, probed for this model's shapes
        llm = model.cfg.llm
        choice = resolve_dtype("auto", device, llm.dim, llm.ffn_dim or llm.moe_ffn_dim)
    asked = list(dict.fromkeys(choice.dtype if d == "auto" else d for d in o.dtype)) if o.dtype else None
    peaks = {dt: (o.peak_tflops or matmul_peak_tflops(device, dt)) for dt in (asked or ["fp32", "bf16"])
             if dt != "fp16" or device.type == "cuda"}
    dtypes = asked or ["fp32"] + (["bf16"] if peaks.get("bf16", 0) >= 0.5 * peaks["fp32"] else [])
    res = _header(o, device, model, peaks, dtypes, loaded)
    if choice is not None:
        res["dtype_auto"] = {**asdict(choice), "weights": choice.weights}
    if "train" in sections:
        tok = _bench_training(o, model, tok, device, dtypes, peaks, mem, res)
        res["efficiency"] = efficiency(res["train"], peaks, res["peak_source"])
    if "decode" in sections:
        tok = _bench_decoding(o, model, tok, device, dtypes, mem, res)
    own_template = getattr(tok, "chat_template", None) not in (None, CHAT_TEMPLATE)
    res["tokenizer"] = {"source": source or "trained on the benchmark rows (about one token per word)",
                        "size": len(tok), "chat_template": "its own" if own_template else "ChatML",
                        "image_token": model.cfg.image_token, "image_token_id": model.cfg.image_token_id,
                        "tokens_per_image": model.tokens_per_image}
    return res


def _model_and_tokenizer(o: BenchOptions) -> tuple[MiniMindVLM, Any, str | None]:
    """The model, the tokenizer if one is already known (else None: trained on the rows later), and its source."""
    if o.model:
        if o.tokenizer or o.image_token:
            raise ValueError("--tokenizer and --image-token go with a fresh --preset model: a run directory "
                             "(--model) brings its own tokenizer")
        from ..model.checkpoint import load_run

        model, tok = load_run(o.model, "cpu")
        return model, tok, f"the run's own ({o.model})"
    if not o.tokenizer:
        if o.image_token:
            raise ValueError("--image-token names the placeholder of a --tokenizer; the tokenizer trained on the "
                             f"rows has {IMAGE_TOKEN}")
        return build_model(o.preset, o.vision, o.projector, o.max_len, o.seed), None, None
    from ..data.tokenizer import load_tokenizer
    from ..train.stage import placeholder_id

    tok = load_tokenizer(o.tokenizer)
    image_token = o.image_token or IMAGE_TOKEN
    # The model finds image positions by id, so it must be the placeholder's id in this tokenizer (ours: 3, the
    # minimind-3v tokenizer: 12); placeholder_id also refuses a placeholder that is not one token per copy.
    image_id = placeholder_id(tok, image_token)
    model = build_model(o.preset, o.vision, o.projector, o.max_len, o.seed, image_token, image_id)
    if len(tok) > model.cfg.llm.vocab_size:
        raise ValueError(f"the tokenizer in {o.tokenizer!r} has {len(tok)} tokens, more than the {o.preset} "
                         f"model's vocabulary of {model.cfg.llm.vocab_size}")
    return model, tok, str(Path(o.tokenizer).resolve())


def _header(o: BenchOptions, device: torch.device, model: MiniMindVLM, peaks: dict[str, float],
            dtypes: list[str], loaded: float) -> dict[str, Any]:
    """The environment, the options, the model's size and the peaks MFU is measured against."""
    res: dict[str, Any] = {
        "env": {"torch": torch.__version__, "device": device_name(device), "threads": torch.get_num_threads(),
                "python": platform.python_version()},
        "config": asdict(o),
        "params_M": {"llm": round(model.llm.num_parameters() / 1e6, 3),
                     "projector": round(sum(p.numel() for p in model.projector.parameters()) / 1e6, 3),
                     "vision": round(sum(p.numel() for p in model.vision.parameters()) / 1e6, 3)},
        "peak_tflops": {k: round(v, 4) for k, v in peaks.items()},
        "peak_source": "--peak-tflops" if o.peak_tflops else "measured matmul",
        "dtypes": dtypes,
        "memory_mb": {"after_load": loaded},
    }
    if "bf16" not in dtypes and "bf16" in peaks and not o.dtype:
        res["bf16_skipped"] = (f"bf16 matmuls run at {peaks['bf16'] * 1e3:.1f} GFLOPS here against "
                               f"{peaks['fp32'] * 1e3:.1f} in fp32: no native bf16 on this device")
    return res


def _bench_training(o: BenchOptions, model: MiniMindVLM, tok: Any, device: torch.device, dtypes: list[str],
                    peaks: dict[str, float], mem: PeakMemory, res: dict[str, Any]) -> Any:
    """res["train"][dtype]: training timed by phase, from the same weights for each dtype; returns the tokenizer."""
    if o.data:
        from ..data.formats import SampleReader

        rows: Any = SampleReader(o.data)
    else:
        lo, hi = (int(x) for x in o.words.split(","))
        rows = synthetic_samples(o.batch_size * max(4, o.steps), (lo, hi), model.vision.image_size, o.seed)
    tok = tok or tokenizer_for(rows, 400, model.cfg.llm.vocab_size)
    if len(tok) > model.cfg.llm.vocab_size:
        raise ValueError(f"tokenizer has {len(tok)} tokens, more than the model's vocabulary")
    apply_freeze(model, o.freeze_llm)
    if o.compile:
        for layer in model.llm.layers:
            layer.compile(dynamic=True)
    enc = CutEncoder(tok, model.vision.preprocess, model.tokens_per_image, model.cfg.image_token, o.max_len)
    full = [len(encode_conversation(tok, record(rows, i)["conversations"], tokens_per_image=model.tokens_per_image,
                                    image_token=model.cfg.image_token)[0])
            for i in range(len(rows) if o.group_by_length else min(len(rows), STAT_ROWS))]
    cut = [min(o.max_len, n) for n in full]
    res["data"] = {"rows": len(rows), "rows_measured": len(full),
                   "real_tokens_per_sample": {"mean": round(sum(cut) / len(cut), 1), "min": min(cut), "max": max(cut)},
                   "longest_uncut": max(full), "cut_at_max_len": sum(n > o.max_len for n in full)}
    lengths = cut if o.group_by_length else None
    # Without grouping, rows are read in file order: the reference reads the same rows the same way.
    loader = EpochLoader(EncodedRows(rows, enc), o.batch_size, seed=o.seed, shuffle=o.group_by_length,
                         lengths=lengths, collate_fn=PackCollate(o.max_len) if o.pack else PadCollate())
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    res["train"] = {}
    for dt in dtypes:
        model.load_state_dict(init)  # every dtype starts from the same weights
        mem.reset()
        r = bench_train(model, loader.batches(), device=device, dtype=dt, warmup=o.warmup, steps=o.steps,
                        repeats=o.repeats, peak_tflops=peaks.get(dt), batch_size=o.batch_size,
                        fused_adamw=o.fused_adamw)
        r["peak_memory_mb"] = mem.read()
        res["train"][dt] = r
    return tok


def _bench_decoding(o: BenchOptions, model: MiniMindVLM, tok: Any, device: torch.device, dtypes: list[str],
                    mem: PeakMemory, res: dict[str, Any]) -> Any:
    """res["decode"]: decoding speed per weight storage and dtype (and res["inference_rss"] with o.rss); returns
    the tokenizer."""
    if tok is None:
        rows = synthetic_samples(64, (20, 120), model.vision.image_size, o.seed)
        tok = tokenizer_for(rows, 64, model.cfg.llm.vocab_size)
    res["decode"] = {}
    for w in o.weights or ["fp32"]:
        m, label = with_weights(model, w, o.encoder_weights), weights_label(w, o.encoder_weights)
        if o.compile:  # the first (warm-up) run of each batch size pays for the compilation
            compile_decoding(m)
        for dt in dtypes if label == "fp32" else ["fp32"]:  # low-precision weights compute in fp32
            mem.reset()
            r = bench_decode(m, tok, device=device, dtype=dt, new_tokens=o.decode_tokens,
                             batch_sizes=sorted({1, o.decode_batch}), repeats=o.repeats,
                             image_size=model.vision.image_size)
            r["peak_memory_mb"] = mem.read()
            res["decode"][dt if label == "fp32" else f"{label}_weights"] = r
    if o.rss and device.type == "cpu":
        res["inference_rss"] = inference_rss_of(model, tok, o.weights or ["fp32"], o.encoder_weights,
                                                o.decode_tokens)
    return tok
