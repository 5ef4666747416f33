"""The reference's training step and ours, alternated step by step in one process: a ratio that a busy machine
cannot skew (both sides see the same load within seconds of each other).

`vs_reference.py` alternates whole runs of refbench's `ref_bench.py` and `minimind-v bench`; on a machine whose
load swings within minutes, this finer alternation is the check. The reference side is built exactly as
`ref_bench.py` builds it, from the reference's own model / dataset / collate code, imported from the checkout
given with --ref (nothing of it lives here). Run it with the reference's virtualenv and this package on the path:

    PYTHONPATH=/path/to/minimind-v HF_DATASETS_CACHE=/tmp/hf /path/refvenv/bin/python benchmarks/interleaved.py \\
        --ref /path/ref --vision /path/ve/siglip2-base-p32-256-ve --rows realistic.parquet --group-by-length
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def reference_side(a: argparse.Namespace):
    """(train step fn, decode fn) for the reference, set up as ref_bench.py sets it up."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    sys.path.insert(0, os.path.abspath(a.ref))
    from dataset.lm_dataset import VLMDataset
    from model.model_vlm import MiniMindVLM, VLMConfig
    from trainer.trainer_utils import vlm_collate_fn

    vcfg = AutoConfig.from_pretrained(a.vision)
    cfg = VLMConfig(hidden_size=512, num_hidden_layers=8, max_seq_len=768, image_hidden_size=vcfg.hidden_size,
                    image_token_len=(vcfg.image_size // vcfg.patch_size) ** 2)
    torch.manual_seed(0)
    model = MiniMindVLM(cfg, vision_model_path=a.vision)
    tok = AutoTokenizer.from_pretrained(os.path.join(a.ref, "model"))
    for n, p in model.named_parameters():
        p.requires_grad = "vision_encoder" not in n
    ds = VLMDataset(a.rows, tok, preprocess=model.processor, max_length=768,
                    image_special_token=cfg.image_special_token, image_token_len=cfg.image_token_len)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, num_workers=0, collate_fn=vlm_collate_fn)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    it = iter(loader)

    def step() -> None:
        model.train()
        model.vision_encoder.eval()
        input_ids, labels, pixel_values = next(it)
        out = model(input_ids, labels=labels, pixel_values=pixel_values)
        (out.loss + out.aux_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def decode(image, n: int) -> float:
        class Stamps:  # the streamer's put() marks each token's arrival; the first put is the prompt
            def __init__(self):
                self.t = []

            def put(self, x):
                self.t.append(time.perf_counter())

            def end(self):
                pass
        model.eval()
        pv = MiniMindVLM.image2tensor(image, model.processor)
        content = cfg.image_special_token * cfg.image_token_len + "\nDescribe this image."  # as ref_bench.py asks
        text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                       add_generation_prompt=True)
        inputs = tok(text, return_tensors="pt")
        s = Stamps()
        with torch.no_grad():
            model.generate(inputs=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=n,
                           do_sample=False, eos_token_id=None, streamer=s, pixel_values=pv)
        return (len(s.t) - 2) / (s.t[-1] - s.t[1])

    return step, decode


def our_side(a: argparse.Namespace):
    import torch

    from minimind_v.data.chat import encode_conversation, encode_prompt
    from minimind_v.data.formats import SampleReader
    from minimind_v.data.batches import PadCollate
    from minimind_v.data.tokenizer import train_tokenizer
    from minimind_v.eval.bench_data import CutEncoder, EncodedRows, build_model
    from minimind_v.eval.decode_bench import with_weights
    from minimind_v.infer.generate import GenerationConfig, compile_decoding, generate_stream
    from minimind_v.train.loader import EpochLoader
    from minimind_v.train.freeze import apply_freeze
    from minimind_v.train.optim import make_optimizer
    from minimind_v.train.trainer import TrainConfig, lm_loss

    model = build_model("minimind3-small", a.vision, "mlp", 768)
    rows = SampleReader(a.rows)
    tok = train_tokenizer([m["content"] for i in range(min(400, len(rows))) for m in
                           rows.record(i)["conversations"]], vocab_size=6400)
    apply_freeze(model, 0)
    enc = CutEncoder(tok, model.vision.preprocess, model.tokens_per_image, model.cfg.image_token, 768)
    lengths = None
    if a.group_by_length:
        lengths = [min(768, len(encode_conversation(tok, rows.record(i)["conversations"], tokens_per_image=
                                                    model.tokens_per_image, image_token=model.cfg.image_token)[0]))
                   for i in range(len(rows))]
    batches = EpochLoader(EncodedRows(rows, enc), 4, shuffle=a.group_by_length, lengths=lengths,
                          collate_fn=PadCollate()).batches()
    opt = make_optimizer(model, TrainConfig(lr=1e-4))
    if a.compile:  # as the trainer's --compile does: each decoder block, dynamic in the sequence length
        for layer in model.llm.layers:
            layer.compile(dynamic=True)
    if a.fused_adamw:
        opt = torch.optim.AdamW(opt.param_groups, lr=1e-4, betas=(0.9, 0.95), fused=True)
    shapes = []
    infer = None

    def step() -> None:
        model.train()
        batch = next(batches)
        shapes.append(list(batch["input_ids"].shape))
        loss, aux = lm_loss(model, batch)
        (loss + aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def decode(image, n: int) -> float:
        nonlocal infer
        if infer is None:  # an eager copy (no compiled blocks), weights stored as --weights says
            infer = with_weights(build_model("minimind3-small", a.vision, "mlp", 768), a.weights)
            infer.load_state_dict(model.state_dict(), strict=False)
            if a.compile:
                compile_decoding(infer)
        infer.eval()
        prompt = encode_prompt(tok, [{"role": "user", "content": "<image>\nDescribe this image."}],
                               tokens_per_image=infer.tokens_per_image, image_token=infer.cfg.image_token)
        stream = generate_stream(infer, [prompt], infer.vision.preprocess([image]), GenerationConfig(max_new_tokens=n))
        next(stream)
        t = time.perf_counter()
        k = sum(1 for _ in stream)
        return k / (time.perf_counter() - t)

    return step, decode, shapes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True)
    ap.add_argument("--vision", required=True)
    ap.add_argument("--rows", required=True, help="a parquet file written by ref_bench.py --write-parquet")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--group-by-length", action="store_true")
    ap.add_argument("--fused-adamw", action="store_true")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile our decoder blocks (training) and our decoding step")
    ap.add_argument("--weights", default="fp32", choices=["fp32", "bf16", "fp16"], help="our decoding's weights")
    ap.add_argument("--decode-tokens", type=int, default=100)
    ap.add_argument("--decode-runs", type=int, default=3, help="0: no decoding comparison")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import torch
    from PIL import Image

    torch.set_num_threads(a.threads)
    ref_step, ref_decode = reference_side(a)
    our_step, our_decode, shapes = our_side(a)
    t_ref, t_our = [], []
    for i in range(a.warmup + a.steps):
        for fn, out in ((ref_step, t_ref), (our_step, t_our)):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        print(f"step {i}: reference {t_ref[-1]:.2f} s, ours {t_our[-1]:.2f} s (load {os.getloadavg()[0]:.1f})",
              flush=True)
    pairs = [r / o for r, o in zip(t_ref[a.warmup:], t_our[a.warmup:])]
    res = {"rows": os.path.basename(a.rows), "group_by_length": a.group_by_length, "fused_adamw": a.fused_adamw,
           "compile": a.compile, "weights": a.weights,
           "reference_step_s": statistics.median(t_ref[a.warmup:]), "ours_step_s": statistics.median(t_our[a.warmup:]),
           "ratio_per_step_pair": {"min": min(pairs), "median": statistics.median(pairs), "max": max(pairs)},
           "ours_batch_shapes": shapes[a.warmup:]}
    if a.decode_runs:
        image = Image.new("RGB", (256, 256), (200, 120, 40))
        d_ref, d_our = [], []
        for i in range(a.decode_runs + 1):
            r, o = ref_decode(image, a.decode_tokens), our_decode(image, a.decode_tokens)
            if i:
                d_ref.append(r)
                d_our.append(o)
        res["decode_tokens_per_s"] = {"reference": statistics.median(d_ref), "ours": statistics.median(d_our),
                                      "ratio": statistics.median(o / r for r, o in zip(d_ref, d_our))}
    print(json.dumps(res, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
