#!/usr/bin/env bash
# Training throughput and MFU on one CUDA GPU, bf16 autocast, for the two MiniMind2 sizes.
#
#   bash benchmarks/gpu_bench.sh [OUT_DIR] [VISION]
#
# VISION is 'scratch' (the embedded encoder, default) or a local CLIP/SigLIP folder. Set PEAK_TFLOPS to the card's
# dense bf16 peak (H100 SXM: 989) to get MFU against the datasheet; without it MFU is against a measured matmul.
# Each JSON holds samples/s, tokens/s, the phase split, mfu (whole step) and mfu_model (data phase excluded, as the
# trainer overlaps it with DataLoader workers), decode tokens/s and peak allocated memory. BENCH_ARGS adds flags to
# every run, e.g. BENCH_ARGS="--compile" (compiled decoder blocks and decoding step; the first steps compile).
set -euo pipefail
OUT=${1:-bench_gpu}
VISION=${2:-scratch}
mkdir -p "$OUT"
PEAK=()
if [ -n "${PEAK_TFLOPS:-}" ]; then PEAK=(--peak-tflops "$PEAK_TFLOPS"); fi
read -r -a EXTRA <<< "${BENCH_ARGS:-}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
for preset in minimind2-small minimind2; do
  python -m minimind_v.cli bench --device cuda --dtype bf16 --preset "$preset" --vision "$VISION" \
    --batch-size 64 --max-len 512 --words 200,400 --warmup 3 --steps 10 --repeats 3 \
    --decode-tokens 128 --decode-batch 32 "${PEAK[@]}" "${EXTRA[@]}" --out "$OUT/gpu_${preset}.json" > /dev/null
  python - "$OUT/gpu_${preset}.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
t, d = r["train"]["bf16"], r["decode"]["bf16"]
print(f"{r['config']['preset']:16s} {r['env']['device']}: {t['samples_per_s']['median']:.1f} samples/s, "
      f"{t['tokens_per_s']['median']:.0f} tokens/s, MFU {t.get('mfu', {}).get('median', float('nan')):.1%} "
      f"(model only {t.get('mfu_model', {}).get('median', float('nan')):.1%}), "
      f"decode {d['batch1']['decode_tokens_per_s']['median']:.0f} tok/s at batch 1")
EOF
done
