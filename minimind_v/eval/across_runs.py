"""Several training runs (e.g. three training seeds) scored on the same held-out items: per kind, every run's score,
their mean and their minimum. A recipe is only as good as its worst seed, so a target counts as met when the
minimum meets it.
"""
from __future__ import annotations

from typing import Any

from .shapes import TARGETS, UNSEEN_TARGET, unseen_means


def _rows(per_run: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """{kind: {"scores": [one per run], "mean", "min", "n"}} over the kinds every run has."""
    runs = list(per_run.values())
    kinds = [k for k in runs[0] if all(k in r for r in runs)] if runs else []
    out = {}
    for kind in kinds:
        scores = [r[kind]["score"] for r in runs]
        out[kind] = {"n": runs[0][kind]["n"], "scores": scores, "mean": sum(scores) / len(scores), "min": min(scores)}
    return out


def across_runs(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """reports: run name -> an `evaluate_shapes` result (its "summary" and "unseen"). Returns the runs' names, and
    per kind every run's score with the mean and the minimum, for the contract's and the unseen wordings; the
    unseen mean over the kinds is summarised the same way."""
    if not reports:
        raise ValueError("across_runs needs at least one run's evaluation")
    names = list(reports)
    seen = _rows({n: r["summary"] for n, r in reports.items()})
    unseen = _rows({n: r.get("unseen") or {} for n, r in reports.items()})
    out: dict[str, Any] = {"runs": names, "canonical": seen, "unseen": unseen}
    if unseen:  # per run: the mean over the kinds with a target, and over every kind
        for key, which in (("unseen_mean", "targeted"), ("unseen_mean_all", "all")):
            means = [unseen_means({k: {"score": r["scores"][i]} for k, r in unseen.items()})[which]
                     for i in range(len(names))]
            out[key] = {"scores": means, "mean": sum(means) / len(means), "min": min(means)}
    return out


def _line(label: str, n: Any, row: dict[str, Any], target: float | None) -> str:
    met = "" if target is None else ("yes" if row["min"] >= target else "no")
    per_run = " | ".join(f"{s:.3f}" for s in row["scores"])
    tgt = "" if target is None else f"{target:.2f}"
    return f"| {label} | {n} | {per_run} | {row['mean']:.3f} | {row['min']:.3f} | {tgt} | {met} |"


def across_runs_markdown(summary: dict[str, Any]) -> str:
    """Two tables (the contract's wordings; unseen wordings), one column per run, then mean, minimum, target and
    whether the minimum meets it."""
    names = summary["runs"]
    head = ("| kind | n | " + " | ".join(names) + " | mean | min | target | met (min) |\n"
            + "|---" * (len(names) + 6) + "|")
    lines = [f"Contract wordings, {len(names)} runs:", "", head]
    lines += [_line(k, r["n"], r, TARGETS.get(k)) for k, r in summary["canonical"].items()]
    if summary["unseen"]:
        lines += ["", "Unseen wordings (the same scenes, wordings training never used):", "", head]
        lines += [_line(k, r["n"], r, UNSEEN_TARGET if k == "caption" else None)
                  for k, r in summary["unseen"].items()]
        lines.append(_line("mean over the kinds with a target", "", summary["unseen_mean"], UNSEEN_TARGET))
        if "unseen_mean_all" in summary:
            lines.append(_line("mean over every kind (motion and absent too)", "", summary["unseen_mean_all"], None))
    return "\n".join(lines)
