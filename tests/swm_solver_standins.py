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
    """A batched continuous action space: ``shape`` (n_envs, A), bounds ``low``/``high`` (n_envs, A)."""

    shape: tuple
    bound: float = 1.0

    @property
    def low(self):
        return np.full(self.shape, -self.bound, dtype=np.float32)

    @property
    def high(self):
        return np.full(self.shape, self.bound, dtype=np.float32)


@dataclass
class DiscreteSpace:
    """A Discrete action space of ``n`` categories (gymnasium's ``Discrete``: shape ())."""

    n: int
    shape: tuple = ()


@dataclass
class VectorEnv:
    num_envs: int
    action_space: Any


# ---------------------------------------------------------------------------------------------------------------------
# The other solvers of stable-worldmodel 0.1.1 (solver/icem.py, gd.py, lagrangian.py, predictive_sampling.py, pgd.py,
# categorical_cem.py), written for these tests after its code: same draws from the seeded generator in the same order,
# same updates, same return dicts. Any Costable (get_cost(info, candidates)) plugs in.


def _expand(info_dict, lo, hi, n, keep_others=False):
    out = {}
    for k, v in info_dict.items():
        if torch.is_tensor(v):
            out[k] = v[lo:hi].unsqueeze(1).expand(hi - lo, n, *v.shape[1:])
        elif isinstance(v, np.ndarray):
            out[k] = np.repeat(v[lo:hi][:, None], n, axis=1)
        else:
            out[k] = v if keep_others else v[lo:hi]
    return out


class ICEMSolver(_SamplingSolver):
    """Coloured noise rescaled to unit std over the horizon, alpha momentum, n_elite_keep elites injected at 1..,
    candidates clamped to the (tiled) action box, return_mean."""

    def __init__(self, model, noise_beta=2.0, alpha=0.1, n_elite_keep=5, return_mean=True, **kwargs):
        super().__init__(model, **kwargs)
        self.noise_beta, self.alpha, self.n_elite_keep, self.return_mean = noise_beta, alpha, n_elite_keep, return_mean

    def configure(self, *, action_space, n_envs, config):
        super().configure(action_space=action_space, n_envs=n_envs, config=config)
        self.low = torch.tensor(action_space.low[0]).repeat(config.action_block)
        self.high = torch.tensor(action_space.high[0]).repeat(config.action_block)

    @torch.inference_mode()
    def solve(self, info_dict, init_action=None):
        n = len(next(iter(info_dict.values())))
        mean = torch.zeros(n, 0, self.action_dim) if init_action is None else init_action
        mean = torch.cat([mean, torch.zeros(n, self.horizon - mean.shape[1], self.action_dim)], dim=1)
        var = self.var_scale * torch.ones(n, self.horizon, self.action_dim)
        freqs = torch.fft.rfftfreq(self.horizon)
        freqs[0] = 1.0
        scale = freqs.pow(-self.noise_beta / 2)
        scale[0] = scale[1]
        costs_out = []
        for lo in range(0, n, self.batch_size):
            hi = min(lo + self.batch_size, n)
            infos, m, s, prev = _expand(info_dict, lo, hi, self.num_samples), mean[lo:hi], var[lo:hi], None
            for _ in range(self.n_steps):
                white = torch.randn(hi - lo, self.num_samples, self.action_dim, self.horizon, generator=self.torch_gen)
                colored = torch.fft.irfft(torch.fft.rfft(white, dim=-1) * scale, n=self.horizon, dim=-1)
                noise = (colored / colored.std(dim=-1, keepdim=True).clamp(min=1e-8)).transpose(-1, -2)
                cand = noise * s.unsqueeze(1) + m.unsqueeze(1)
                cand[:, 0] = m
                if prev is not None:
                    k = min(self.n_elite_keep, prev.shape[1])
                    cand[:, 1:1 + k] = prev[:, :k]
                cand = cand.clamp(self.low, self.high)
                c = self.model.get_cost(infos, cand)
                vals, idx = torch.topk(c, k=self.topk, dim=1, largest=False)
                prev = cand[torch.arange(hi - lo).unsqueeze(1), idx]
                m = self.alpha * m + (1 - self.alpha) * prev.mean(1)
                s = self.alpha * s + (1 - self.alpha) * prev.std(1)
            mean[lo:hi] = m if self.return_mean else prev[:, 0]
            var[lo:hi] = s
            costs_out.extend(vals.mean(1).tolist())
        return {"actions": mean, "costs": costs_out, "mean": [mean], "var": [var]}


class PredictiveSamplingSolver(_SamplingSolver):
    def __init__(self, model, batch_size=1, num_samples=300, noise_scale=1.0, seed=1234):
        super().__init__(model, batch_size=batch_size, num_samples=num_samples, seed=seed)
        self.noise_scale = noise_scale

    @torch.inference_mode()
    def solve(self, info_dict, init_action=None):
        n = len(next(iter(info_dict.values())))
        nominal = torch.zeros(n, 0, self.action_dim) if init_action is None else init_action
        nominal = torch.cat([nominal, torch.zeros(n, self.horizon - nominal.shape[1], self.action_dim)], dim=1)
        costs = []
        for lo in range(0, n, self.batch_size):
            hi = min(lo + self.batch_size, n)
            noise = torch.randn(hi - lo, self.num_samples, self.horizon, self.action_dim, generator=self.torch_gen)
            cand = nominal[lo:hi].unsqueeze(1) + noise * self.noise_scale
            cand[:, 0] = nominal[lo:hi]
            c = self.model.get_cost(_expand(info_dict, lo, hi, self.num_samples), cand)
            best = c.argmin(1)
            nominal[lo:hi] = cand[torch.arange(hi - lo), best]
            costs.extend(c[torch.arange(hi - lo), best].tolist())
        return {"costs": costs, "actions": nominal}


class GradientSolver(torch.nn.Module):
    """gd.py: samples = init (+ var_scale noise on 1..), optimizer per chunk, per step backward / clip / step / noise;
    the sample with the lowest last-step cost, after the last step."""

    def __init__(self, model, n_steps, batch_size=None, var_scale=1, num_samples=1, action_noise=0.0, seed=1234,
                 optimizer_cls=torch.optim.SGD, optimizer_kwargs=None, grad_clip=None):
        super().__init__()
        self.model, self.n_steps, self.batch_size, self.num_samples = model, n_steps, batch_size, num_samples
        self.var_scale, self.action_noise, self.grad_clip = var_scale, action_noise, grad_clip
        self.torch_gen = torch.Generator().manual_seed(seed)
        self.optimizer_cls, self.optimizer_kwargs = optimizer_cls, optimizer_kwargs or {"lr": 1.0}

    configure = _SamplingSolver.configure
    action_dim = _SamplingSolver.action_dim
    horizon = _SamplingSolver.horizon

    def _init(self, n, actions):
        actions = torch.zeros(n, 0, self.action_dim) if actions is None else actions
        actions = torch.cat([actions, torch.zeros(n, self.horizon - actions.shape[1], self.action_dim)], dim=1)
        actions = actions.unsqueeze(1).repeat_interleave(self.num_samples, dim=1)
        actions[:, 1:] += torch.randn(actions[:, 1:].shape, generator=self.torch_gen) * self.var_scale
        return actions

    def loss(self, infos, params, lo, hi):
        costs = self.model.get_cost(infos, params)
        return costs.sum(), costs

    def descend(self, infos, params, lo, hi, history):
        optim = self.optimizer_cls([params], **self.optimizer_kwargs)
        costs = None
        for _ in range(self.n_steps):
            loss, costs = self.loss(infos, params, lo, hi)
            loss.backward()
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
            optim.step()
            optim.zero_grad(set_to_none=True)
            if self.action_noise > 0:
                params.data += torch.randn(params.shape, generator=self.torch_gen) * self.action_noise
            history.append(loss.item())
        return costs

    def solve(self, info_dict, init_action=None, n=None):
        n = len(next(iter(info_dict.values()))) if n is None else n
        with torch.no_grad():
            init = self._init(n, init_action)
        bs = self.batch_size or n
        out = {"cost": [], "actions": []}
        for lo in range(0, n, bs):
            hi = min(lo + bs, n)
            params = init[lo:hi].clone().requires_grad_(True)
            history = []
            costs = self.descend(_expand(info_dict, lo, hi, self.num_samples, keep_others=True), params, lo, hi, history)
            out["cost"].append(history)
            top = torch.argsort(costs, dim=1)[:, 0]
            out["actions"].append(params[torch.arange(hi - lo), top].detach())
        out["actions"] = torch.cat(out["actions"])
        return out


class LagrangianSolver(GradientSolver):
    """lagrangian.py: n_outer_steps rounds of n_steps steps of a fresh optimizer on the augmented Lagrangian of the
    model's get_constraints (when it has one), dual ascent and rho growth after each round."""

    def __init__(self, model, n_steps, n_outer_steps=5, rho_init=1.0, rho_max=1e4, rho_scale=2.0, **kwargs):
        kwargs.setdefault("optimizer_cls", torch.optim.Adam)
        super().__init__(model, n_steps, **kwargs)
        self.n_outer_steps, self.rho_init, self.rho_max, self.rho_scale = n_outer_steps, rho_init, rho_max, rho_scale
        self.lambdas = None

    def loss(self, infos, params, lo, hi):
        costs = self.model.get_cost(dict(infos), params)
        if not hasattr(self.model, "get_constraints"):
            return costs.sum(), costs
        g = self.model.get_constraints(dict(infos), params)
        if self.lambdas is None:
            self.lambdas = torch.zeros(self._n_envs, g.shape[-1])
        lam = self.lambdas[lo:hi]
        loss = costs + (lam.unsqueeze(1) * g).sum(-1) + self.rho * torch.relu(g).pow(2).sum(-1)
        return loss.sum(), costs

    def descend(self, infos, params, lo, hi, history):
        self.rho = self.rho_init
        costs = None
        for _ in range(self.n_outer_steps):
            costs = super().descend(infos, params, lo, hi, history)
            if hasattr(self.model, "get_constraints"):
                with torch.no_grad():
                    g = self.model.get_constraints(dict(infos), params)
                    self.lambdas[lo:hi] = torch.clamp(self.lambdas[lo:hi] + self.rho * g.mean(1), min=0.0)
                self.rho = min(self.rho_max, self.rho * self.rho_scale)
        return costs

    def solve(self, info_dict, init_action=None):
        out = super().solve(info_dict, init_action, n=self._n_envs)
        out["lambdas"] = self.lambdas
        return out


def project_simplex(x, n):
    """pgd.py's projection of each group of n values onto the probability simplex (sort-based)."""
    s = x.reshape(-1, n)
    mu = torch.sort(s, descending=True, dim=-1).values
    cum = mu.cumsum(-1)
    cond = (mu > (cum - 1) / torch.arange(1, n + 1)).int()
    rho = (cond.cumsum(-1) * cond).max(-1, keepdim=True).values.clamp(min=1).long()
    return torch.clamp(s - (cum.gather(-1, rho - 1) - 1) / rho, min=0.0).reshape(x.shape)


class CategoricalCEMSolver(_SamplingSolver):
    """categorical_cem.py: Gumbel-max draws (one torch.rand per step), candidate 0 = argmax, one-hot refit."""

    def __init__(self, model, batch_size=1, num_samples=300, n_steps=30, topk=30, smoothing=0.0, alpha=0.0, seed=1234):
        super().__init__(model, batch_size=batch_size, num_samples=num_samples, n_steps=n_steps, topk=topk, seed=seed)
        self.smoothing, self.alpha = smoothing, alpha

    def configure(self, *, action_space, n_envs, config):
        self._n_envs, self._config, self.k = n_envs, config, int(action_space.n)

    @torch.inference_mode()
    def solve(self, info_dict, init_action=None):
        n, ab, k = len(next(iter(info_dict.values()))), self._config.action_block, self.k
        probs = torch.full((n, self.horizon, ab, k), 1.0 / k)
        costs_out = []
        for lo in range(0, n, self.batch_size):
            hi = min(lo + self.batch_size, n)
            p, infos = probs[lo:hi], _expand(info_dict, lo, hi, self.num_samples)
            for _ in range(self.n_steps):
                logp = p.clamp_min(1e-10).log().unsqueeze(1).expand(hi - lo, self.num_samples, *p.shape[1:])
                u = torch.rand(logp.shape, generator=self.torch_gen).clamp_min(1e-10)
                idx = (logp - (-u.log()).log()).argmax(-1)
                idx[:, 0] = p.argmax(-1)
                one_hot = torch.nn.functional.one_hot(idx, k).float()
                c = self.model.get_cost(infos, one_hot.reshape(hi - lo, self.num_samples, self.horizon, ab * k))
                vals, top = torch.topk(c, k=self.topk, dim=1, largest=False)
                new = one_hot[torch.arange(hi - lo).unsqueeze(1), top].mean(1)
                if self.smoothing > 0:
                    new = (new + self.smoothing) / (new + self.smoothing).sum(-1, keepdim=True)
                p = self.alpha * p + (1 - self.alpha) * new if self.alpha > 0 else new
            probs[lo:hi] = p
            costs_out.extend(vals.mean(1).tolist())
        return {"costs": costs_out, "probs": [probs], "actions": probs.argmax(-1)}


class QuadraticCost:
    """A Costable that is not a world model: ||candidates - target||^2 summed over steps and entries (B, N)."""

    def __init__(self, target=0.5):
        self.target = target

    def get_cost(self, info_dict, candidates):
        return (candidates - self.target).pow(2).sum(dim=(-1, -2))


class BoxConstrainedCost(QuadraticCost):
    """QuadraticCost with stable-worldmodel's get_constraints: every entry <= 0.2 (one constraint per entry)."""

    def get_constraints(self, info_dict, candidates):
        return candidates.amax(dim=2) - 0.2
