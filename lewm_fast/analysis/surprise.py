"""Surprise: how far the predictor's next latent lands from the encoder's latent of the frame that came,
``||predicted - encoded||^2`` per step, on real trajectories and on ones perturbed in the simulator (``perturb``).

Detection: the surprise at each perturbed event frame is a positive, every step of the clean trajectories a negative;
AUROC is the probability that an event outscores a clean step, and ``ratio`` is the mean event surprise over the mean
surprise of the clean trajectories at the same frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..data import ActionCodec
from ..data.latents import model_image_size, to_model_input
from ..reference.lewm import LeWM
from .perturb import KINDS, SKIPPED, perturbation, simulate
from .sources import ModelSource, load_inputs


@torch.no_grad()
def surprise_trace(model: LeWM, pixels: torch.Tensor, actions: torch.Tensor) -> np.ndarray:
    """pixels (T, 3, h, w) model input, actions (T, action_dim) normalised blocks (block i follows frame i) ->
    surprise (T,) float64: NaN at frame 0, frame t >= 1 predicted from the last ``history_size`` frames before it."""
    t = pixels.shape[0]
    out = np.full(t, np.nan)
    if t < 2:
        return out
    emb, act = model.encode(pixels.unsqueeze(0), actions.unsqueeze(0))
    h = min(model.history_size, t - 1)
    windows = lambda x: x[0].unfold(0, h, 1).movedim(-1, 1)[: t - h]  # noqa: E731  (t - h, h, D): frames j..j+h-1
    pred = model.predict(windows(emb), windows(act))
    pred = torch.cat([pred[0], pred[1:, -1]])  # predictions of frames 1..t-1
    out[1:] = (pred - emb[0, 1:]).float().square().sum(-1).cpu().double().numpy()
    return out


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve of scores separating positives from negatives (Mann-Whitney U, ties count half)."""
    pos, neg = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def detection(events: Sequence[tuple[np.ndarray, int]], clean: Sequence[np.ndarray]) -> dict[str, float]:
    """``events``: (perturbed trace, event frame) pairs, each paired with ``clean[i]`` (the same episode unperturbed).
    -> {"auroc": event surprises vs every clean step, "ratio": mean event surprise / mean clean surprise at those
    frames, "events": count}."""
    at_event = np.array([trace[k] for trace, k in events])
    clean_at = np.array([c[k] for (_, k), c in zip(events, clean)])
    negatives = np.concatenate([c[np.isfinite(c)] for c in clean])
    ratio = at_event.mean() / clean_at.mean() if clean_at.mean() > 0 else np.inf
    return {"auroc": auroc(at_event, negatives), "ratio": float(ratio), "events": len(events)}


def _block_actions(actions: np.ndarray, frames: int, codec: ActionCodec) -> torch.Tensor:
    """Env actions (steps, A) -> normalised blocks (frames, frameskip*A), block i following frame i (NaN past the
    episode -> 0)."""
    blocks = np.full((frames * codec.frameskip, codec.action_dim), np.nan)
    n = min(len(actions), len(blocks))
    blocks[:n] = actions[:n]
    return torch.nan_to_num(codec.normalize(torch.from_numpy(blocks.reshape(frames, -1)))).float()


def surprise(model: ModelSource, data: str, *, env: str | None = None, episodes: int | list[int] | None = 8,
             kinds: Sequence[str] = KINDS, after: int = 6, seed: int = 0, device: str | None = None) -> dict[str, Any]:
    """Surprise traces of the first ``episodes`` episodes of ``data`` (or those listed), clean and with each
    perturbation kind planted at an event frame (``after`` frames are simulated past it). Episodes with fewer than
    ``history_size + 3`` frames (``frameskip`` steps apart) are left out. -> {"env", "frameskip", "episodes": the
    episodes used, "short_episodes": those left out, "min_frames", "kinds": {kind: detection(...)}, "overall": detection
    over all kinds, "skipped": {kind: why it is not built}, "traces": [{"episode", "kind", "event", "clean" (F,),
    "perturbed" (<= event + after + 1,)}]}."""
    from .. import envs

    inputs = load_inputs(model, data, episodes, env, device)
    net, norm, eps, name = inputs.model, inputs.norm, inputs.episodes, inputs.env
    chosen = {k: perturbation(name, k) for k in kinds}
    if not any(chosen.values()):
        notes = "; ".join(f"{k}: {SKIPPED.get((name, k), 'not built')}" for k in chosen) or "no kind was asked for"
        raise ValueError(f"none of the perturbation kinds asked for is built for {name} ({notes})")
    sim = envs.make(name, image_size=eps.image_size, seed=seed)
    action_dim = int(sim.action_space.shape[0])
    frameskip = int(norm["frameskip"]) if norm else net.action_dim // action_dim
    if frameskip * action_dim != net.action_dim:
        raise ValueError(f"the model takes {net.action_dim}-wide action blocks, but {name} has {action_dim}-d actions "
                         f"(x frameskip {frameskip}): the model was trained on another environment")
    mean, std = (norm["action"]["mean"], norm["action"]["std"]) if norm else eps.action_stats
    codec = ActionCodec(mean, std, frameskip, action_dim)
    size, where = model_image_size(net), next(net.parameters()).device
    rng = np.random.default_rng(seed)

    def trace(frames: np.ndarray, actions: np.ndarray) -> np.ndarray:
        blocks = _block_actions(actions, len(frames), codec).to(where)
        return surprise_trace(net, to_model_input(frames, size).to(where), blocks)

    traces: list[dict[str, Any]] = []
    min_frames, used, short = net.history_size + 3, [], []
    for episode, frames, actions, states in zip(eps.ids, eps.frames, eps.action, eps.state):
        frames, frame_states = frames[::frameskip], states[::frameskip]
        if len(frames) < min_frames:
            short.append(episode)
            continue
        used.append(episode)
        clean = trace(frames, actions)
        for kind, p in chosen.items():
            if p is None:
                continue
            event = p.choose(sim.unwrapped, frame_states, net.history_size, rng)
            tail = simulate(sim, p, states, actions, event * frameskip, min(after + 1, len(frames) - event), frameskip, rng)
            traces.append({"episode": episode, "kind": kind, "event": event, "clean": clean,
                           "perturbed": trace(np.concatenate([frames[:event], tail]), actions)})
    if not traces:
        raise ValueError(f"no episode of {eps.path} has the {min_frames} frames ({frameskip} steps apart) "
                         "a surprise trace needs")

    def detect(rows: list[dict[str, Any]]) -> dict[str, float]:
        return detection([(r["perturbed"], r["event"]) for r in rows], [r["clean"] for r in rows])

    return {"env": name, "data": str(eps.path), "frameskip": frameskip, "episodes": used, "short_episodes": short,
            "min_frames": min_frames,
            "kinds": {k: detect([r for r in traces if r["kind"] == k]) for k, p in chosen.items() if p is not None},
            "overall": detect(traces),
            "skipped": {k: SKIPPED.get((name, k), "not built for this env") for k, p in chosen.items() if p is None},
            "traces": traces}
