"""Loss curves from metrics.jsonl, one panel per stage, saved as PNG (no display needed)."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path


def plot_metrics(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    # A Figure of its own, not pyplot: no display needed, and a notebook's plotting backend is left alone.
    from matplotlib.figure import Figure

    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    val: dict[str, list[tuple[int, float]]] = defaultdict(list)  # validation losses, where the stage had them
    for line in Path(metrics_path).read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            series[row.get("stage", "train")].append((row["step"], row["loss"]))
        if "val_loss" in row:
            val[row.get("stage", "train")].append((row["step"], row["val_loss"]))
    if not series:
        return None
    fig = Figure(figsize=(4 * len(series), 3))
    axes = fig.subplots(1, len(series), squeeze=False)
    for ax, (stage, pts) in zip(axes[0], series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label="train")
        if val[stage]:
            ax.plot([p[0] for p in val[stage]], [p[1] for p in val[stage]], "o-", label="validation")
            ax.legend()
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    return Path(out_png)
