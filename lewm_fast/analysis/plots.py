"""PNG figures of the analyses' results (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

TEAL, RED, GREY = "#009688", "#d32f2f", "#9e9e9e"
DPI = 120  # a 3.4-inch panel is 408 px wide
MODEL_COLOURS = {"trained": TEAL, "random": GREY}


def _figure(rows: int, cols: int, width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    return plt, fig, axes


def _save(plt, fig, path: str | os.PathLike, dpi: int = DPI) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_probe(result: dict[str, Any], path: str | os.PathLike, max_points: int = 250) -> Path:
    """Predicted vs true test values of every quantity (columns) for the linear and MLP probes (rows), the trained
    model's in teal and the random baseline's in grey, test R^2 (3 decimals) in each title."""
    names, models = result["quantities"], result["models"]
    plt, fig, axes = _figure(2, len(names), 3.4, 3.4)
    rng = np.random.default_rng(0)
    for row, kind in enumerate(("linear", "mlp")):
        for col, name in enumerate(names):
            ax, titles = axes[row, col], []
            for model, res in models.items():
                true, pred = res["test"]["true"][:, col], res["test"][kind][:, col]
                keep = rng.permutation(len(true))[:max_points]
                ax.scatter(true[keep], pred[keep], s=3, alpha=0.5, color=MODEL_COLOURS.get(model, RED), label=model)
                titles.append(f"{model} {res[kind][name]['r2']:.3f}")
            true = models["trained"]["test"]["true"][:, col]
            ax.plot([true.min(), true.max()], [true.min(), true.max()], "k--", lw=0.8)
            ax.set_title(f"{name} ({kind})\nR² " + ", ".join(titles), fontsize=10)
            ax.tick_params(labelsize=9)
    axes[0, 0].legend(fontsize=9, markerscale=3)
    fig.suptitle(f"{result['env']}: probes of the frozen latents\non test episodes (x: true, y: predicted)",
                 fontsize=11)
    return _save(plt, fig, path)


def plot_surprise(result: dict[str, Any], path: str | os.PathLike, per_kind: int = 4) -> Path:
    """Per perturbation kind, up to ``per_kind`` surprise traces aligned at their event (frame 0, dashed): clean in
    grey, perturbed in red; AUROC and event ratio in the titles."""
    kinds = list(result["kinds"])
    plt, fig, axes = _figure(1, max(len(kinds), 1), 3.6, 2.8)
    for ax, kind in zip(axes[0], kinds):
        rows = [r for r in result["traces"] if r["kind"] == kind][:per_kind]
        for r in rows:
            x = np.arange(len(r["clean"])) - r["event"]
            ax.plot(x, r["clean"], color=GREY, lw=1)
            ax.plot(x[r["event"] - 1: len(r["perturbed"])], r["perturbed"][r["event"] - 1:], color=RED, lw=1.2)
        ax.axvline(0, color="k", ls="--", lw=0.8)
        ax.set_yscale("log")
        d = result["kinds"][kind]
        ax.set_title(f"{kind}: AUROC {d['auroc']:.3f}, event ×{d['ratio']:.1f}", fontsize=9)
        ax.set_xlabel("frames from the event", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("surprise ||pred - enc||²", fontsize=8)
    skipped = "; ".join(f"{k} skipped: {why}" for k, why in result["skipped"].items())
    fig.suptitle(f"{result['env']}: surprise, clean (grey) vs perturbed (red)" + (f"\n{skipped}" if skipped else ""),
                 fontsize=9)
    return _save(plt, fig, path)


def plot_latent_map(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """The 2-D latent map twice, coloured by the quantity and by time step, with the highlighted episode's path."""
    plt, fig, axes = _figure(1, 2, 4.0, 3.6)
    xy, path_xy = result["coords"], result["coords"][result["episode"] == result["highlight"]]
    for ax, (key, label, cmap) in zip(axes[0], (("value", result["quantity"], "viridis"), ("step", "time step", "plasma"))):
        points = ax.scatter(xy[:, 0], xy[:, 1], c=result[key], s=3, cmap=cmap, alpha=0.7)
        ax.plot(path_xy[:, 0], path_xy[:, 1], "k-", lw=1)
        ax.plot(*path_xy[0], "ko", ms=5)
        ax.plot(*path_xy[-1], "k*", ms=9)
        fig.colorbar(points, ax=ax).set_label(label, fontsize=8)
        ax.set_title(f"coloured by {label}", fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{result['env']} latents: {result['note']}; episode {result['highlight']} as a path (o start, * end)",
                 fontsize=9)
    return _save(plt, fig, path)
