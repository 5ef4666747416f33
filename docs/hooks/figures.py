"""The concept page's figures and shape table, drawn by the code itself: an mkdocs hook, and a script.

    python docs/hooks/figures.py --run runs/quickstart --out docs/figures

Every number on the page comes from running the package: the shapes from real encoders of each lineage's
geometry (random weights; a shape does not depend on them), the pictures from a trained run. Which run: the
environment variable MINIMIND_V_DOCS_RUN, else `runs/quickstart` beside mkdocs.yml when it holds a model, else
the smoke preset, trained here in seconds into `runs/docs-smoke` (what a fresh checkout and CI draw from; the
smoke model has learnt next to nothing, and the page says which run it shows).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import minimind_v  # noqa: E402
from minimind_v.config import VisionConfig  # noqa: E402
from minimind_v.data.world import eval_seed, render, sample_scene  # noqa: E402
from minimind_v.encoder_files import write_random_encoder  # noqa: E402
from minimind_v.eval.attention import answer_attention  # noqa: E402
from minimind_v.model.projector import Projector  # noqa: E402
from minimind_v.model.vision import VisionEncoder  # noqa: E402
from minimind_v.quickstart import QUICKSTART_PRESETS, run_quickstart  # noqa: E402
from minimind_v.train.plots import plot_metrics  # noqa: E402
from minimind_v.train.recipes import vision_recipe  # noqa: E402

QUESTION = "What color is the circle?"


def pick_run(root: Path) -> tuple[Path, str]:
    """The run the pictures are drawn from, and a line saying which it is."""
    if os.environ.get("MINIMIND_V_DOCS_RUN"):
        run = Path(os.environ["MINIMIND_V_DOCS_RUN"])
        return run, f"the run in `{run.name}` (MINIMIND_V_DOCS_RUN)"
    if (root / "runs/quickstart/model.safetensors").is_file():
        return root / "runs/quickstart", "`runs/quickstart`, the default quickstart of the machine that built the site"
    run = root / "runs/docs-smoke"
    if not (run / "model.safetensors").is_file():
        run_quickstart(run, dataclasses.replace(QUICKSTART_PRESETS["smoke"]), device="cpu", evaluate=False,
                       say=lambda *_: None)
    return run, ("the **smoke** preset (trained in seconds when the site was built; it has learnt next to nothing, "
                 "so its answer is gibberish and its attention unshaped; build the site after `minimind-v "
                 "quickstart` to see a trained model here)")


# (name, vision config maker, projector, LLM width): the geometries the page tabulates.
def _lineages(tmp: Path) -> list[tuple[str, VisionConfig, str, int]]:
    rows = []
    for name, key, llm_dim in [("quickstart default", "default", 192), ("quickstart smoke", "smoke", 64)]:
        rows.append((name, QUICKSTART_PRESETS[key].vision, "mlp", llm_dim))
    for name, recipe, merge, llm_dim in [("MiniMind2-V: CLIP ViT-B/16", "clip-b16", 1, 512),
                                         ("CLIP ViT-B/16, `--merge 2`", "clip-b16", 2, 512),
                                         ("minimind-3v: SigLIP2-B/32", "siglip2-b32", 1, 768)]:
        r = vision_recipe(recipe)
        path = tmp / recipe
        if not path.exists():  # the real width and patch grid, one random layer: shapes need no trained weights
            write_random_encoder(r.kind, path, image_size=r.image_size, patch_size=r.patch_size, width=768,
                                 heads=12, seed=0)
        rows.append((name, r.vision_config(str(path), merge), r.projector, llm_dim))
    return rows


@torch.no_grad()
def shape_table(tmp: Path) -> str:
    """Markdown: each geometry's tensor shapes from pixels to the placeholder run, measured by a forward pass."""
    lines = ["| encoder | pixels | patch grid | encoder tokens | after merge | projector → LLM | placeholders |",
             "|---|---|---|---|---|---|---|"]
    for name, vcfg, proj_kind, llm_dim in _lineages(tmp):
        unmerged = VisionEncoder(dataclasses.replace(vcfg, merge=1)).eval()
        # The same tower, built once: only the merge differs.
        merged = VisionEncoder(vcfg, tower=(unmerged.tower, unmerged.processor)).eval()
        pixels = torch.zeros(1, 3, merged.image_size, merged.image_size)
        before, after = unmerged(pixels), merged(pixels)
        projected = Projector(proj_kind, merged.out_dim, llm_dim)(after)
        g = round(before.shape[1] ** 0.5)
        lines.append(f"| {name} | {merged.image_size}² | {g} × {g} | {before.shape[1]} × {before.shape[2]} | "
                     f"{after.shape[1]} × {after.shape[2]} (k = {vcfg.merge}) | {proj_kind}: "
                     f"{projected.shape[1]} × {projected.shape[2]} | {merged.n_tokens} × `<|image_pad|>` |")
    return "\n".join(lines) + "\n"


def _scene_with_circle(seed: int = 0):
    for i in range(1000):
        scene = sample_scene(random.Random(eval_seed(4_200_000 + seed + i)), 2)
        if any(o.shape == "circle" for o in scene.objects):
            return scene
    raise RuntimeError("no scene with a circle drawn")


def _pca_colours(feats: torch.Tensor) -> torch.Tensor:
    """[tokens, C] -> [tokens, 3] in [0, 1]: the first three principal components as RGB."""
    x = feats.float() - feats.float().mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    rgb = x @ v[:3].T
    rgb = (rgb - rgb.min(0).values) / (rgb.max(0).values - rgb.min(0).values + 1e-8)
    return rgb


@torch.no_grad()
def draw_pipeline(vlm, image, out: Path) -> None:
    """image -> patch grid -> encoder tokens -> merged tokens -> projected tokens -> the prompt's placeholder run."""
    vision, model = vlm.model.vision, vlm.model
    pixels = vlm.preprocess([image])
    merged = vision(pixels)[0]
    k = vision.cfg.merge
    g_after = round(merged.shape[0] ** 0.5)
    g_before = g_after * k
    before = merged.reshape(g_after, g_after, k, k, -1).permute(0, 2, 1, 3, 4).reshape(g_before ** 2, -1)
    projected = model.projector(merged.unsqueeze(0))[0]
    fig, ax = plt.subplots(1, 4, figsize=(13, 3.8))
    ax[0].imshow(image.resize((192, 192)))
    for i in range(1, g_before):
        ax[0].axhline(i * 192 / g_before, color="white", lw=0.6)
        ax[0].axvline(i * 192 / g_before, color="white", lw=0.6)
    ax[0].set_title(f"{vision.image_size}×{vision.image_size} px, {g_before}×{g_before} patch grid")
    ax[1].imshow(_pca_colours(before).reshape(g_before, g_before, 3).numpy())
    ax[1].set_title(f"encoder tokens {before.shape[0]} × {before.shape[1]}")
    ax[2].imshow(_pca_colours(merged).reshape(g_after, g_after, 3).numpy())
    ax[2].set_title(f"{k}×{k} merge: {merged.shape[0]} × {merged.shape[1]}")
    ax[3].imshow(_pca_colours(projected).reshape(1, -1, 3).numpy(), aspect="auto")
    ax[3].set_title(f"projector: {projected.shape[0]} × {projected.shape[1]}\n(the placeholder run, in order)")
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.text(0.5, 0.02, "Colours: each token's first three principal components (similar colour = similar feature)",
             ha="center", fontsize=9)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def prompt_tokens(vlm, question: str) -> str:
    """The prompt as the model reads it, one token per cell, the placeholder run folded."""
    ids = vlm.encode_chat([{"role": "user", "content": "<image>\n" + question}], 1)
    toks = vlm.tokenizer.convert_ids_to_tokens(ids)
    pad = vlm.model.cfg.image_token
    shown, i = [], 0
    while i < len(toks):
        if toks[i] == pad:
            j = i
            while j < len(toks) and toks[j] == pad:
                j += 1
            shown.append(f"{pad} × {j - i}")
            i = j
        else:
            shown.append(toks[i].replace("Ġ", "␣").replace("Ċ", "\\n"))
            i += 1
    return " · ".join(f"`{t}`" for t in shown)


def draw_attention(vlm, image, scene, out: Path) -> str:
    """The answer's key token's attention over the image tokens, one panel per layer; returns the caption."""
    circle = next(o for o in scene.objects if o.shape == "circle")
    att = answer_attention(vlm, image, QUESTION, prefix="The circle is")
    n = att.per_layer.shape[0]
    fig, ax = plt.subplots(1, n + 1, figsize=(3 * (n + 1), 3.5))
    ax[0].imshow(image.resize((192, 192)))
    ax[0].set_title("the image")
    for layer in range(n):
        grid = att.grid(layer)
        ax[layer + 1].imshow(image.resize((192, 192)))
        ax[layer + 1].imshow(grid.numpy(), cmap="magma", alpha=0.6, extent=(0, 192, 192, 0))
        ax[layer + 1].set_title(f"layer {layer}: {100 * float(att.image_share[layer]):.0f}% on the image")
    for a in ax:
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    where = ", ".join(f"a {o.size} {o.color} {o.shape} ({o.position})" for o in scene.objects)
    return (f"The scene: {where}. Asked *{QUESTION}*, the model answered *{att.answer!r}*; the panels show where "
            f"the token `{att.query_token.strip()}` of the teacher-forced prefix *The circle is* looks, averaged "
            f"over heads (the model's next token there: *{att.predicted.strip()}*; the right one: *{circle.color}*). "
            f"Brighter cells take more of its attention; each panel has its own scale.")


def draw_all(run: Path, run_line: str, out: Path) -> None:
    hf_logging.disable_progress_bar()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (out / "shapes.md").write_text(shape_table(Path(tmp)))
    vlm = minimind_v.load(str(run), device="cpu")
    scene = _scene_with_circle()
    image = render(scene, vlm.model.vision.image_size, random.Random(0))
    draw_pipeline(vlm, image, out / "pipeline.png")
    caption = draw_attention(vlm, image, scene, out / "attention.png")
    (out / "prompt.md").write_text(prompt_tokens(vlm, QUESTION) + "\n")
    (out / "attention.md").write_text(caption + "\n")
    (out / "run.md").write_text(f"These pictures were drawn from {run_line}.\n")
    if not plot_metrics(run / "metrics.jsonl", out / "loss.png"):
        raise RuntimeError(f"{run}/metrics.jsonl has no losses to draw")


_drawn: set[Path] = set()


def on_pre_build(config, **_kw) -> None:
    """mkdocs hook: draw once per process (a multi-language build calls this once per language)."""
    root = Path(config.config_file_path).parent
    out = Path(config.docs_dir) / "figures"
    if out in _drawn:
        return
    run, line = pick_run(root)
    draw_all(run, line, out)
    _drawn.add(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run directory (e.g. runs/quickstart)")
    p.add_argument("--out", required=True, help="folder to write the figures into")
    a = p.parse_args()
    draw_all(Path(a.run), f"`{a.run}`", Path(a.out))
