"""Linear (closed-form ridge) and small-MLP probes from frozen-encoder latents to the physical quantities an
environment stores, trained and tested on disjoint episodes, for a trained model and a same-size random one."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import check_positive_int
from ..data import split_episodes
from ..data.latents import encode_frames
from .quantities import read_quantities, resolve_quantities
from .sources import ModelSource, load_inputs, random_like

RIDGE_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _standardize(x: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x standardised with ref's column mean / std, mean, std); constant columns keep std 1."""
    mean, std = ref.mean(0), ref.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    return (x - mean) / std, mean, std


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge on standardised features: x (N, D), y (N, Q) -> (weight (D, Q), bias (Q,)) in x's own units,
    so ``x @ weight + bias`` predicts y. The penalty is ``alpha * N * ||w||^2``."""
    xs, mean, std = _standardize(x, x)
    y_mean = y.mean(0)
    gram = xs.T @ xs + alpha * len(x) * np.eye(x.shape[1])
    w = np.linalg.solve(gram, xs.T @ (y - y_mean)) / std[:, None]
    return w, y_mean - mean @ w


def select_ridge(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, folds: int = 5) -> float:
    """The ``RIDGE_GRID`` penalty with the lowest cross-validated error (standardised targets), folds by group."""
    ids = np.random.default_rng(seed).permutation(np.unique(groups))
    if len(ids) < 2:
        return 1e-3
    errors = np.zeros(len(RIDGE_GRID))
    for held in np.array_split(ids, min(folds, len(ids))):
        val = np.isin(groups, held)
        ys = _standardize(y, y[~val])[0]
        errors += [np.mean((x[val] @ w + b - ys[val]) ** 2) for w, b in (fit_ridge(x[~val], ys[~val], a) for a in RIDGE_GRID)]
    return float(RIDGE_GRID[int(np.argmin(errors))])


def fit_mlp(x: np.ndarray, y: np.ndarray, hidden: int = 256, epochs: int = 100, lr: float = 1e-3,
            seed: int = 0) -> nn.Module:
    """A one-hidden-layer MLP on standardised x (N, D) -> standardised y (N, Q) (AdamW, batches of 256); returns a
    module mapping raw x to raw y."""
    xs, x_mean, x_std = _standardize(x, x)
    ys, y_mean, y_std = _standardize(y, y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.GELU(), nn.Linear(hidden, y.shape[1]))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        xt, yt = torch.as_tensor(xs, dtype=torch.float32), torch.as_tensor(ys, dtype=torch.float32)
        for _ in range(epochs):
            for idx in torch.randperm(len(xt)).split(256):
                opt.zero_grad()
                nn.functional.mse_loss(net(xt[idx]), yt[idx]).backward()
                opt.step()
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    return _Rescaled(net.eval(), f32(x_mean), f32(x_std), f32(y_mean), f32(y_std))


class _Rescaled(nn.Module):
    def __init__(self, net: nn.Module, x_mean, x_std, y_mean, y_std):
        super().__init__()
        self.net, self.x_mean, self.x_std, self.y_mean, self.y_std = net, x_mean, x_std, y_mean, y_std

    @torch.no_grad()
    def forward(self, x: np.ndarray) -> np.ndarray:
        xt = (torch.as_tensor(x, dtype=torch.float32) - self.x_mean) / self.x_std
        return (self.net(xt) * self.y_std + self.y_mean).double().numpy()


def metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """R^2 (1 - SS_res / SS_tot about the test mean), Pearson r and MSE of one quantity (N,)."""
    ss_tot = float(((true - true.mean()) ** 2).sum())
    ss_res = float(((true - pred) ** 2).sum())
    r = float(np.corrcoef(true, pred)[0, 1]) if true.std() > 0 and pred.std() > 0 else 0.0
    return {"r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"), "pearson": r, "mse": ss_res / len(true)}


def probe_latents(latents: np.ndarray, targets: np.ndarray, groups: np.ndarray, names: Sequence[str],
                  test_fraction: float = 0.25, seed: int = 0, ridge: float | None = None, mlp_hidden: int = 256,
                  mlp_epochs: int = 100) -> dict[str, Any]:
    """Fit both probes on latents (N, D) -> targets (N, Q), split by ``groups`` (N,) (episode ids): a
    ``test_fraction`` of the groups is the test set. -> {"linear": {name: metrics}, "mlp": {...}, "ridge_alpha",
    "linear_map": {"weight" (D, Q), "bias" (Q,)}, "train_groups", "test_groups", "test": {"true", "linear", "mlp"}
    (n_test, Q) arrays}."""
    ids = np.unique(groups)
    train_idx, test_idx = split_episodes(len(ids), test_fraction, seed)
    if not test_idx:
        raise ValueError(f"probes need at least 2 episodes (one to test on), got {len(ids)}")
    test = np.isin(groups, ids[test_idx])
    x_train, y_train = latents[~test].astype(np.float64), targets[~test]
    alpha = select_ridge(x_train, y_train, groups[~test], seed) if ridge is None else float(ridge)
    w, b = fit_ridge(x_train, y_train, alpha)
    mlp = fit_mlp(x_train, y_train, mlp_hidden, mlp_epochs, seed=seed)
    x_test = latents[test].astype(np.float64)
    preds = {"linear": x_test @ w + b, "mlp": mlp(x_test)}
    out: dict[str, Any] = {
        kind: {n: metrics(targets[test][:, q], p[:, q]) for q, n in enumerate(names)} for kind, p in preds.items()
    }
    out.update(ridge_alpha=alpha, linear_map={"weight": w, "bias": b}, train_groups=ids[train_idx].tolist(),
               test_groups=ids[test_idx].tolist(), test={"true": targets[test], **preds})
    return out


def probe(model: ModelSource, data: str, *, env: str | None = None, quantities: Sequence[str] | None = None,
          episodes: int | list[int] | None = None, every: int = 1, test_fraction: float = 0.25, seed: int = 0,
          ridge: float | None = None, mlp_hidden: int = 256, mlp_epochs: int = 100, baseline: bool = True,
          device: str | None = None) -> dict[str, Any]:
    """Probe the frozen encoder of ``model`` (a checkpoint path or LeWM) on the frames of episode file ``data`` (every
    ``every``-th step of the first ``episodes`` episodes, or those listed) for the env's ``quantities`` (all by
    default; see ``quantities.QUANTITIES``). -> {"env", "quantities", "frames", "episodes", "models": {"trained":
    probe_latents(...), "random": ... (when ``baseline``)}}."""
    check_positive_int(every, "every")
    inputs = load_inputs(model, data, episodes, env, device)
    net, eps, name = inputs.model, inputs.episodes, inputs.env
    names = resolve_quantities(name, quantities)
    targets = np.concatenate([read_quantities(name, names, s[::every], p[::every]) for s, p in zip(eps.state, eps.proprio)])
    frames = np.concatenate([f[::every] for f in eps.frames])
    groups = np.concatenate([np.full(len(f[::every]), i) for i, f in zip(eps.ids, eps.frames)])
    models = {"trained": net, **({"random": random_like(net, seed)} if baseline else {})}
    results = {key: probe_latents(encode_frames(m, frames), targets, groups, names, test_fraction, seed, ridge,
                                  mlp_hidden, mlp_epochs) for key, m in models.items()}
    return {"env": name, "data": str(eps.path), "quantities": names, "frames": len(frames), "episodes": eps.ids,
            "latent_dim": net.latent_dim, "models": results}


def summary_rows(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows (quantity, then test R^2 of each model x probe) of a ``probe`` result, for a printed table."""
    cols = [(m, k) for m in result["models"] for k in ("linear", "mlp")]
    header = ("quantity", *(f"{m} {k}" for m, k in cols))
    rows = [tuple(f"{result['models'][m][k][q]['r2']:.3f}" for m, k in cols) for q in result["quantities"]]
    return [header, *((q, *r) for q, r in zip(result["quantities"], rows))]
