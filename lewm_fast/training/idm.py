"""GC-IDM training on a frozen LeWM (``lewm-train-idm``; arXiv 2605.08732's goal-conditioned inverse dynamics).

1. ``encode_episodes``: every frame of the chosen episodes through the frozen encoder, once (``latents.npz`` beside
   the IDM, reused while the model's weights hash, the file and the episodes are the same).
2. ``HindsightPairs``: each start step t of an episode whose action block (the ``frameskip`` env actions from t,
   normalised with the run's statistics) is finite, with a goal ``k`` frames (blocks of ``frameskip`` steps) later,
   k in [1, K] and inside the episode. Training draws one k per start per epoch; the held-out set is every (t, k).
3. ``train_idm``: MSE between ``GCIDM(z_t, z_{t+k}, k/K)`` and the executed block; AdamW; held-out loss each epoch;
   ``idm.pt`` written after every epoch. Epoch e's shuffle and k draws come from a generator seeded by (seed, e), so a
   resumed run ends with the weights an uninterrupted one has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import ActionCodec
from ..data.h5format import open_h5
from ..data.latents import encode_frames
from ..data.layout import EpisodeLayout, read_layout, read_rows
from ..io.build import CheckpointError
from ..io.idm import read_idm_file, save_idm, weights_hash
from ..reference.idm import GCIDM
from ..reference.lewm import LeWM

LATENTS_FILE = "latents.npz"


@dataclass
class EpisodeLatents:
    """Frozen-encoder latents of whole episodes, concatenated: ``latents`` (N, D) float32, ``actions`` (N, A_env)
    float32 raw env actions (NaN where the file has none), ``starts``/``lengths`` (E,) rows of each episode,
    ``episodes`` (E,) their indices in the file."""

    latents: np.ndarray
    actions: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    episodes: np.ndarray


def encode_episodes(model: LeWM, path: Path, layout: EpisodeLayout, episodes: Sequence[int],
                    cache: Optional[Path] = None, progress: bool = True) -> EpisodeLatents:
    """Latents of every frame of ``episodes`` (file indices) of ``path``; read from / written to ``cache`` (an .npz
    keyed by the model's weights hash, the file path and the episodes)."""
    episodes = np.asarray(sorted(int(e) for e in episodes), dtype=np.int64)
    key = np.array(f"{weights_hash(model)}|{Path(path).resolve()}")
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == str(key) and np.array_equal(z["episodes"], episodes):
                return EpisodeLatents(z["latents"], z["actions"], z["starts"], z["lengths"], z["episodes"])
    lengths = layout.lengths[episodes].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    latents, actions = [], []
    with open_h5(path) as f:
        for e in tqdm(episodes, desc="encoding episodes", disable=not progress, dynamic_ncols=True):
            lo = int(layout.starts[e])
            hi = lo + int(layout.lengths[e])
            latents.append(encode_frames(model, read_rows(f, layout, "pixels", lo, hi)))
            actions.append(read_rows(f, layout, "action", lo, hi).astype(np.float32))
    out = EpisodeLatents(np.concatenate(latents).astype(np.float32), np.concatenate(actions), starts, lengths, episodes)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".tmp-{cache.name}")
        with tmp.open("wb") as fh:
            np.savez(fh, key=key, latents=out.latents, actions=out.actions, starts=starts, lengths=lengths,
                     episodes=episodes)
        tmp.replace(cache)
    return out


class HindsightPairs:
    """(t, t + k frames) pairs of ``EpisodeLatents`` with frames ``frameskip`` env steps apart and k in [1, K].

    ``index`` (M,) rows of the valid starts, ``max_k`` (M,) the largest k each allows (<= K), ``blocks`` (M, A) the
    normalised action blocks executed from each start (A = frameskip x env action dim).
    """

    def __init__(self, data: EpisodeLatents, codec: ActionCodec, frameskip: int, horizon: int):
        self.data, self.frameskip, self.horizon = data, frameskip, horizon
        index, max_k = [], []
        for start, length in zip(data.starts, data.lengths):
            t = np.arange(length)
            k = np.minimum((length - 1 - t) // frameskip, horizon)
            ok = k >= 1  # also puts the whole block inside the episode (t + frameskip <= length - 1)
            index.append(start + t[ok])
            max_k.append(k[ok])
        self.index = np.concatenate(index).astype(np.int64) if index else np.zeros(0, np.int64)
        self.max_k = np.concatenate(max_k).astype(np.int64) if max_k else np.zeros(0, np.int64)
        rows = self.index[:, None] + np.arange(frameskip)[None, :]
        raw = torch.from_numpy(data.actions[rows].reshape(len(self.index), -1).astype(np.float64))
        blocks = codec.normalize(raw).float()
        finite = torch.isfinite(blocks).all(dim=1).numpy()
        self.index, self.max_k, self.blocks = self.index[finite], self.max_k[finite], blocks[finite]
        self.latents = torch.from_numpy(data.latents)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, rows: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairs ``rows`` (n,) of this set with offsets ``k`` (n,) -> z (n,D), goal (n,D), k/K (n,), target (n,A)."""
        start = torch.from_numpy(self.index)[rows]
        goal = start + k * self.frameskip
        return self.latents[start], self.latents[goal], k.float() / self.horizon, self.blocks[rows]

    def draw_k(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One uniform k in [1, max_k] per row."""
        u = torch.rand(len(rows), generator=generator, dtype=torch.float64)
        return 1 + (u * torch.from_numpy(self.max_k)[rows]).long()

    def all_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every (row, k) pair: rows (P,), k (P,)."""
        max_k = torch.from_numpy(self.max_k)
        rows = torch.repeat_interleave(torch.arange(len(self.index)), max_k)
        k = torch.cat([torch.arange(1, int(m) + 1) for m in self.max_k]) if len(max_k) else torch.zeros(0, dtype=torch.long)
        return rows, k


@torch.no_grad()
def heldout_loss(idm: GCIDM, pairs: HindsightPairs, batch_size: int = 4096) -> float:
    """Mean squared error (per action entry) of ``idm`` over every (t, k) pair of ``pairs``."""
    rows, k = pairs.all_pairs()
    device = next(idm.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        z, g, r, y = (x.to(device) for x in pairs.batch(rows[i:i + batch_size], k[i:i + batch_size]))
        total += float(torch.nn.functional.mse_loss(idm(z, g, r), y, reduction="sum"))
        count += y.numel()
    return total / max(count, 1)


@dataclass
class IDMTrainSettings:
    hidden: int = 512
    layers: int = 3
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def architecture(self) -> Dict[str, int]:
        return {"hidden": self.hidden, "layers": self.layers}


def train_idm(model_hash: str, train: HindsightPairs, heldout: Optional[HindsightPairs], settings: IDMTrainSettings,
              out: Path, meta: Dict[str, Any], resume: bool = True, progress: bool = True,
              log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train (or resume) a GC-IDM on ``train`` pairs of the world model whose ``weights_hash`` is ``model_hash``,
    writing ``out/idm.pt`` after every epoch. -> the final meta (with ``history``: per-epoch train and held-out loss).
    ``meta`` describes the run (env, frameskip, horizon K, data...)."""
    if not len(train):
        raise ValueError("no training pairs: every training episode is shorter than one action block plus a goal frame")
    s = settings
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        idm = GCIDM(train.latents.shape[1], train.blocks.shape[1], s.hidden, s.layers, train.horizon)
    opt = torch.optim.AdamW(idm.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    history: List[Dict[str, float]] = []
    start_epoch = 0
    fresh = {**meta, "settings": vars(s).copy(), "history": history}
    if resume and (out / "idm.pt").is_file():
        payload = read_idm_file(out)
        old = payload["meta"]
        if payload["model_hash"] != model_hash:
            raise CheckpointError(f"{out / 'idm.pt'} was trained on another world model (weights hash "
                                  f"{payload['model_hash'][:12]}..., this model's is {model_hash[:12]}...): pass "
                                  "overwrite=true to start over, or another out=")
        mismatch = {k: (old.get("settings", {}).get(k), v) for k, v in vars(s).items()
                    if k != "epochs" and old.get("settings", {}).get(k) != v}
        mismatch.update({k: (old.get(k), meta[k]) for k in ("horizon", "frameskip", "env", "data") if old.get(k) != meta[k]})
        if mismatch:
            raise ValueError(f"{out / 'idm.pt'} was trained with other settings ({', '.join(f'{k}: {a!r} -> {b!r}' for k, (a, b) in mismatch.items())}): "
                             "pass overwrite=true to start over, or another out=")
        idm.load_state_dict(payload["state_dict"])
        if payload["train_state"] is not None:
            opt.load_state_dict(payload["train_state"]["optimizer"])
        history = list(old["history"])
        start_epoch = len(history)
        fresh["history"] = history
        log(f"resuming {out / 'idm.pt'} after epoch {start_epoch}")
    baseline = heldout_baseline(heldout)
    bar = tqdm(range(start_epoch, s.epochs), desc="GC-IDM", disable=not progress, dynamic_ncols=True,
               initial=start_epoch, total=s.epochs)
    for epoch in bar:
        g = torch.Generator().manual_seed(s.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(train), generator=g)
        k = train.draw_k(perm, g)
        idm.train()
        total, count = 0.0, 0
        for i in range(0, len(perm), s.batch_size):
            z, goal, r, y = train.batch(perm[i:i + s.batch_size], k[i:i + s.batch_size])
            loss = torch.nn.functional.mse_loss(idm(z, goal, r), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        idm.eval()
        record = {"epoch": epoch + 1, "train_loss": total / count}
        if heldout is not None and len(heldout):
            record["heldout_loss"] = heldout_loss(idm, heldout)
        history.append(record)
        save_idm(out, idm, model_hash, fresh, {"optimizer": opt.state_dict()})
        held = f", held-out {record['heldout_loss']:.4f} (predicting the mean action: {baseline:.4f})" if "heldout_loss" in record else ""
        bar.set_postfix(train=f"{record['train_loss']:.4f}", heldout=f"{record.get('heldout_loss', float('nan')):.4f}")
        log(f"epoch {epoch + 1}/{s.epochs}: train {record['train_loss']:.4f}{held}")
    return fresh


def heldout_baseline(heldout: Optional[HindsightPairs]) -> float:
    """Held-out MSE of always answering the mean action (the zero normalised block): the loss to beat."""
    if heldout is None or not len(heldout):
        return float("nan")
    rows, _ = heldout.all_pairs()
    return float(heldout.blocks[rows].pow(2).mean())


def read_file_layout(path: Path) -> EpisodeLayout:
    """The episode layout of an HDF5 episode file."""
    with open_h5(path) as f:
        return read_layout(f)
