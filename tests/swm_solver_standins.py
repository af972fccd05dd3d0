"""Stand-ins for stable-worldmodel's planning side, for testing lewm_fast's solvers without it installed.

Written for these tests (not imported from stable-worldmodel), they reproduce its observable behaviour:

- ``CostableLeWM``: its LeWM's ``rollout(info, candidates, history_size=3)`` / ``criterion`` / ``get_cost`` — candidate
  blocks 0..H-1 replace the info's actions at the H context frames, ``T - H`` autoregressive steps plus one final
  prediction, cost = squared distance of the last prediction to the last goal latent;
- ``Solver`` (its runtime-checkable protocol), ``PlanConfig``;
- ``CEMSolver`` / ``MPPISolver``: per chunk of ``batch_size`` envs and per iteration one ``torch.randn(bs, N, T, A,
  generator=g)`` draw, candidate 0 = mean, ``torch.topk`` elites, CEM refit to elite mean / unbiased std, MPPI softmax
  weights over the top-k; the output dict (``actions``, ``costs``, ``mean``, ``var``);
- ``WorldModelPolicy``: ``set_env`` configures the solver; ``get_action`` replans envs whose action buffer is empty,
  keeps ``receding_horizon`` blocks, warm-starts the next plan with the rest, and pops one env action per call.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

import swm_standins


class CostableLeWM(swm_standins.LeWM):
    def rollout(self, info, action_sequence, history_size=3):
        h = info["pixels"].size(2)
        b, s, t = action_sequence.shape[:3]
        first, future = action_sequence[:, :, :h], action_sequence[:, :, h:]
        info["action"] = first
        start = self.encode({k: v[:, 0] for k, v in info.items() if torch.is_tensor(v)})
        emb = start["emb"].unsqueeze(1).expand(b, s, -1, -1).flatten(0, 1).clone()
        act = first.flatten(0, 1)
        future = future.flatten(0, 1)
        for step in range(t - h + 1):
            act_emb = self.action_encoder(act)
            pred = self.predict(emb[:, -history_size:], act_emb[:, -history_size:])[:, -1:]
            emb = torch.cat([emb, pred], dim=1)
            if step < t - h:
                act = torch.cat([act, future[:, step : step + 1]], dim=1)
        info["predicted_emb"] = emb.view(b, s, *emb.shape[1:])
        return info

    def criterion(self, info):
        pred = info["predicted_emb"][..., -1:, :]
        goal = info["goal_emb"][..., -1:, :].expand_as(pred)
        return (pred - goal).square().sum(dim=tuple(range(2, pred.ndim)))

    def get_cost(self, info, action_candidates):
        goal = {k: v[:, 0] for k, v in info.items() if torch.is_tensor(v)}
        goal["pixels"] = goal["goal"]
        goal.pop("action")
        info["goal_emb"] = self.encode(goal)["emb"]
        return self.criterion(self.rollout(info, action_candidates))


@runtime_checkable
class Solver(Protocol):
    def configure(self, *, action_space, n_envs, config) -> None: ...

    @property
    def action_dim(self) -> int: ...

    @property
    def n_envs(self) -> int: ...

    @property
    def horizon(self) -> int: ...

    def solve(self, info_dict, init_action=None) -> dict: ...


@dataclass(frozen=True)
class PlanConfig:
    horizon: int
    receding_horizon: int
    history_len: int = 1
    action_block: int = 1
    warm_start: bool = True


class _SamplingSolver:
    def __init__(self, model, batch_size=1, num_samples=300, var_scale=1.0, n_steps=30, topk=30, device="cpu",
                 seed=1234):
        self.model, self.batch_size, self.num_samples, self.var_scale = model, batch_size, num_samples, var_scale
        self.n_steps, self.topk, self.device = n_steps, topk, device
        self.torch_gen = torch.Generator(device=device).manual_seed(seed)

    def configure(self, *, action_space, n_envs, config):
        self._n_envs, self._config = n_envs, config
        self._action_dim = int(np.prod(action_space.shape[1:]))

    @property
    def n_envs(self):
        return self._n_envs

    @property
    def action_dim(self):
        return self._action_dim * self._config.action_block

    @property
    def horizon(self):
        return self._config.horizon

    def __call__(self, *args, **kwargs):
        return self.solve(*args, **kwargs)

    @torch.inference_mode()
    def solve(self, info_dict, init_action=None):
        n = len(next(iter(info_dict.values())))
        mean = torch.zeros(n, 0, self.action_dim) if init_action is None else init_action
        mean = torch.cat([mean, torch.zeros(n, self.horizon - mean.shape[1], self.action_dim)], dim=1).to(self.device)
        var = self.var_scale * torch.ones(n, self.horizon, self.action_dim, device=self.device)
        costs = []
        for lo in range(0, n, self.batch_size):
            hi = min(lo + self.batch_size, n)
            infos = {k: v[lo:hi].to(self.device).unsqueeze(1).expand(hi - lo, self.num_samples, *v.shape[1:])
                     for k, v in info_dict.items() if torch.is_tensor(v)}
            m, s = mean[lo:hi], var[lo:hi]
            for _ in range(self.n_steps):
                noise = torch.randn(hi - lo, self.num_samples, self.horizon, self.action_dim, generator=self.torch_gen,
                                    device=self.device)
                cand = noise * s.unsqueeze(1) + m.unsqueeze(1)
                cand[:, 0] = m
                c = self.model.get_cost(dict(infos), cand)
                m, s, last = self.update(cand, c, m, s)
            mean[lo:hi], var[lo:hi] = m, s
            costs.extend(last)
        return {"actions": mean.cpu(), "costs": costs, "mean": [mean.cpu()], "var": [var.cpu()]}


class CEMSolver(_SamplingSolver):
    def update(self, cand, costs, mean, std):
        vals, idx = torch.topk(costs, k=self.topk, dim=1, largest=False)
        elites = cand[torch.arange(cand.shape[0]).unsqueeze(1), idx]
        self.last_elite_idx = idx
        return elites.mean(1), elites.std(1), vals.mean(1).tolist()


class MPPISolver(_SamplingSolver):
    def __init__(self, model, temperature=0.5, **kwargs):
        super().__init__(model, **kwargs)
        self.temperature = temperature

    def update(self, cand, costs, mean, std):
        if self.topk < self.num_samples:
            costs, idx = torch.topk(costs, k=self.topk, dim=1, largest=False)
            cand = cand[torch.arange(cand.shape[0]).unsqueeze(1), idx]
        weights = torch.softmax(-(costs - costs.min(1, keepdim=True).values) / self.temperature, dim=1)
        return (weights[..., None, None] * cand).sum(1), std, costs.mean(1).tolist()


class WorldModelPolicy:
    def __init__(self, solver, config):
        self.solver, self.cfg = solver, config
        self._next_init = None

    def set_env(self, env):
        self.env = env
        self.solver.configure(action_space=env.action_space, n_envs=env.num_envs, config=self.cfg)
        self._buffers = [deque(maxlen=self.cfg.receding_horizon * self.cfg.action_block) for _ in range(env.num_envs)]
        assert isinstance(self.solver, Solver)

    def get_action(self, info_dict):
        replan = [i for i in range(self.env.num_envs) if not self._buffers[i]]
        if replan:
            idx = torch.as_tensor(replan)
            sliced = {k: v[idx] for k, v in info_dict.items()}
            init = self._next_init[idx] if self._next_init is not None else None
            actions = self.solver(sliced, init_action=init)["actions"]
            keep, rest = actions[:, : self.cfg.receding_horizon], actions[:, self.cfg.receding_horizon :]
            if self.cfg.warm_start and rest.shape[1] > 0:
                if self._next_init is None:
                    self._next_init = torch.zeros(self.env.num_envs, *rest.shape[1:])
                self._next_init[idx] = rest
            plan = keep.reshape(len(replan), self.cfg.receding_horizon * self.cfg.action_block, -1)
            for row, env in enumerate(replan):
                self._buffers[env].extend(plan[row])
        return torch.stack([self._buffers[i].popleft() for i in range(self.env.num_envs)]).numpy()


@dataclass
class BoxSpace:
    """A batched continuous action space: ``shape`` (n_envs, A)."""

    shape: tuple


@dataclass
class VectorEnv:
    num_envs: int
    action_space: Any
