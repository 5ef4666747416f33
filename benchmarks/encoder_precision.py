"""How far a vision encoder's features move when its weights are stored in bf16 or int8 (model/half.py).

Loads the encoder folder three times through the light tower (float32, bf16, int8), runs the same synthetic
images through each, and prints the relative error of the features and the lowest per-token cosine against float32.

    python benchmarks/encoder_precision.py VE/siglip2-base-p32-256-ve --images 4
"""
from __future__ import annotations

import argparse
import random

import torch
import torch.nn.functional as F

from minimind_v.data.synthetic import random_image
from minimind_v.model.vit_light import load_light_vit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vision", help="a CLIP / SigLIP folder saved by transformers")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    feats = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("int8", torch.int8)):
        loaded = load_light_vit(a.vision, weight_dtype=dtype)
        if loaded is None:
            raise SystemExit(f"{a.vision} is not a folder the light tower reads (safetensors CLIP / SigLIP)")
        tower, processor = loaded
        size = tower.config.image_size
        images = [random_image(random.Random(i), size, n_shapes=(2, 6)) for i in range(a.images)]
        with torch.inference_mode():
            feats[name] = tower(processor(images))
    ref = feats["fp32"]
    for name in ("bf16", "int8"):
        rel = float((feats[name] - ref).norm() / ref.norm())
        cos = float(F.cosine_similarity(feats[name], ref, dim=-1).min())
        print(f"{name}: relative error {rel:.2%}, lowest cosine per token {cos:.6f}")


if __name__ == "__main__":
    main()
