"""End-of-run outputs: ``train_log.json`` (config, per-step loss terms, per-epoch means, timing) and
``loss_curves.png`` (total, prediction and SIGReg loss against the step, the held-out prediction loss per epoch,
the learning rate)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

LOSS_TERMS = ("loss", "pred_loss", "sigreg_loss")


def epoch_means(history: Sequence[Dict[str, float]], val_history: Sequence[Dict[str, float]] = ()) -> List[Dict[str, float]]:
    """Mean of each loss term over the steps of each epoch, with the epoch's held-out prediction loss when measured."""
    val = {int(r["epoch"]): float(r["val_pred_loss"]) for r in val_history}
    out: List[Dict[str, float]] = []
    for epoch in sorted({int(r["epoch"]) for r in history}):
        rows = [r for r in history if int(r["epoch"]) == epoch]
        out.append({"epoch": epoch, "steps": len(rows), **{k: float(np.mean([r[k] for r in rows])) for k in LOSS_TERMS}})
        if epoch in val:
            out[-1]["val_pred_loss"] = val[epoch]
    return out


def write_log(path: Union[str, os.PathLike], summary: Dict[str, Any]) -> None:
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.array([values[: i + 1].mean() for i in range(window - 1)])
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_losses(path: Union[str, os.PathLike], history: Sequence[Dict[str, float]], sigreg_weight: float,
                val_history: Sequence[Dict[str, float]] = ()) -> List[str]:
    """Four panels: total loss, prediction MSE (with the held-out prediction MSE per epoch), SIGReg, each per step,
    raw and smoothed, log-scaled; and the learning rate. -> the panel titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in history])
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    titles = {"loss": f"total = pred + {sigreg_weight:g} x SIGReg", "pred_loss": "prediction MSE", "sigreg_loss": "SIGReg"}
    window = max(1, len(steps) // 25)
    for ax, key in zip(axes, LOSS_TERMS):
        values = np.array([r[key] for r in history], dtype=np.float64)
        ax.plot(steps, values, color="tab:blue", alpha=0.3, lw=0.8, label="per step")
        ax.plot(steps, _smooth(values, window), color="tab:blue", lw=1.8, label=f"mean of {window}")
        if key == "pred_loss" and val_history:
            ax.plot([r["step"] for r in val_history], [r["val_pred_loss"] for r in val_history], "o-",
                    color="tab:orange", lw=1.5, ms=4, label="held-out, per epoch")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_title(titles[key])
        ax.set_xlabel("step")
        if np.all(values > 0):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8)
    lr = axes[3]
    lr.plot(steps, [r["lr"] for r in history], color="tab:green", lw=1.5)
    lr.set_title("learning rate")
    lr.set_xlabel("step")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [*titles.values(), "learning rate"]
