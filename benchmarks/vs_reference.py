"""Side by side on one machine: the reference MiniMind-V's training step and decoding against ours.

The reference is run by the refbench tool (`ref_bench.py`, in the reference's own virtualenv, from a checkout
outside this repository; see the README's "Speed" section), which also writes the exact parquet rows it trained on.
Our side is `minimind-v bench` on those same rows with the same model size. Runs alternate (reference, ours,
reference, ours, ...) so that a busy machine slows both alike, and each figure is a ratio within a round.

    python benchmarks/vs_reference.py --ref-python /path/refvenv/bin/python --ref-bench /path/ref_bench.py \\
        --ref /path/ref --vision /path/ve/siglip2-base-p32-256-ve --work /path/scratch --rounds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {  # the two row sets the project is measured on (refbench README)
    "long": ["--n-words", "900"],
    "realistic": ["--n-words", "120", "--n-words-min", "20"],
}
MODEL = ["--hidden", "512", "--layers", "8", "--seq-len", "768", "--batch", "4"]
OURS = ["--preset", "minimind3-small", "--batch-size", "4", "--max-len", "768", "--threads", "2", "--dtype", "fp32"]


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    print("$ " + " ".join(cmd), flush=True)
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if p.returncode:
        sys.exit(f"command failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    print(f"  ({time.time() - t:.0f} s)", flush=True)
    return p.stdout


def reference(a: argparse.Namespace, extra: list[str], out: Path) -> dict:
    env = {"HF_DATASETS_CACHE": str(a.work / "hf_cache"), "HF_HUB_OFFLINE": "1"}
    run([a.ref_python, a.ref_bench, "--ref", a.ref, "--vision", a.vision, *MODEL, "--threads", "2",
         "--json-out", str(out), *extra], env)
    return json.loads(out.read_text())


def ours(a: argparse.Namespace, extra: list[str], out: Path) -> dict:
    run([sys.executable, "-m", "minimind_v.cli", "bench", "--vision", a.vision, *extra, "--out", str(out)])
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref-python", required=True, help="python of the reference's virtualenv")
    ap.add_argument("--ref-bench", required=True, help="path of refbench's ref_bench.py")
    ap.add_argument("--ref", required=True, help="reference checkout (outside this repository)")
    ap.add_argument("--vision", required=True, help="siglip2-base-p32-256-ve folder (make_vision_encoders.py)")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder for rows and results")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rss-preset", default="minimind2-small", help="model whose inference RSS is reported ('none': skip)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of every training run")
    ap.add_argument("--steps", type=int, default=6, help="timed steps of every training run (both sides)")
    ap.add_argument("--compile", action="store_true",
                    help="also time ours with torch.compile (training variants; decoding is then compiled too)")
    ap.add_argument("--weights", default="bf16", choices=["fp32", "bf16", "fp16"], help="our decoding's weights")
    ap.add_argument("--fused-adamw", action="store_true", help="also time ours with fused AdamW (grouped batches)")
    ap.add_argument("--no-plain", action="store_true", help="skip ours in file order / without grouping")
    ap.add_argument("--no-decode", action="store_true", help="skip the decoding comparison")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    rounds = []
    steps = ["--warmup", str(a.warmup), "--steps", str(a.steps)]
    for r in range(a.rounds):
        res: dict = {}
        for name, words in SETTINGS.items():
            rows = a.work / f"{name}.parquet"
            make = [] if rows.is_file() else ["--write-parquet", str(rows)]
            ref = reference(a, [*words, "--rows", "400", *steps, "--skip-gen", *make], a.work / f"ref_{name}_{r}.json")
            ref_sps = 4 / ref["train"]["step_s"]["median"]
            res[name] = {"reference_samples_per_s": ref_sps, "load_avg": os.getloadavg()[0]}
            group = [] if name == "long" else ["--group-by-length"]  # long rows: all 768, nothing to group
            variants = {"": [], "_grouped": group} if group else {"": []}
            if a.no_plain:
                variants = {}
            if a.fused_adamw:
                variants["_fused"] = [*group, "--fused-adamw"]
            if a.compile:
                variants["_compiled"] = [*group, "--fused-adamw", "--compile"]
            for suffix, extra in variants.items():
                # file order reads exactly the reference's rows; grouping reads a random 4 * steps of them
                mine = ours(a, [*OURS, "--data", str(rows), "--only", "train", *steps, "--repeats", "1", *extra],
                            a.work / f"ours_{name}{suffix}_{r}.json")["train"]["fp32"]
                res[name][f"ours{suffix}_samples_per_s"] = mine["samples_per_s"]["median"]
                res[name][f"ratio{suffix}"] = mine["samples_per_s"]["median"] / ref_sps
        rounds.append(res)
        if a.no_decode:
            continue
        ref = reference(a, [*SETTINGS["realistic"], "--skip-train", "--gen-tokens", "100", "--gen-runs", "2"],
                        a.work / f"ref_decode_{r}.json")
        fast = ["--weights", a.weights, *(["--compile"] if a.compile else [])]
        dec = ours(a, [*OURS, "--only", "decode", "--decode-tokens", "100", "--repeats", "2", *fast],
                   a.work / f"ours_decode_{r}.json")["decode"]
        dec = dec["fp32" if a.weights == "fp32" else f"{a.weights}_weights"]
        res["decode"] = {"reference_tokens_per_s": ref["generate"]["decode_tok_per_s"]["median"],
                         "ours_tokens_per_s": dec["batch1"]["decode_tokens_per_s"]["median"],
                         "ours_batched_tokens_per_s": dec["batch8"]["decode_tokens_per_s"]["median"],
                         "ours_ttft_s": dec["batch1"]["time_to_first_token_s"]["median"],
                         "reference_prefill_s": ref["generate"]["prefill_s"]["median"]}
        res["decode"]["ratio"] = res["decode"]["ours_tokens_per_s"] / res["decode"]["reference_tokens_per_s"]
        print(json.dumps(res, indent=1), flush=True)
    print(json.dumps(rounds, indent=1), flush=True)
    if a.rss_preset == "none":
        return
    # a fresh process that loads the model and answers once (bench --rss), half weights and an int8 encoder
    rss = ours(a, ["--preset", a.rss_preset, "--threads", "2", "--dtype", "fp32", "--only", "decode",
                   "--decode-tokens", "100", "--decode-batch", "1", "--repeats", "1", "--weights", "bf16",
                   "--encoder-weights", "int8", "--rss"], a.work / "ours_rss.json")
    summary = {"rounds": rounds, "inference_rss_mb": rss["inference_rss"]["bf16+encoder_int8"]["peak_rss_mb"],
               "inference_model": f"{a.rss_preset} + {Path(a.vision).name}, bf16 weights, int8 encoder",
               "params_M": rss["params_M"]}
    for key in ("long", "realistic", "decode"):
        for field in ("ratio", "ratio_grouped", "ratio_fused", "ratio_compiled"):
            if field in rounds[0].get(key, {}):
                summary[f"{key}_{field}_median"] = round(statistics.median(x[key][field] for x in rounds), 2)
    (a.work / "vs_reference.json").write_text(json.dumps(summary, indent=1))
    print("\n| figure | ratio (median of rounds) |\n|---|---|")
    for k, v in summary.items():
        if k.endswith("_median"):
            print(f"| {k[:-7]} | {v}x |")
    print(f"| inference RSS ({summary['inference_model']}) | {summary['inference_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
