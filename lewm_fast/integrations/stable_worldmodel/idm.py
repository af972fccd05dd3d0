"""The GC-IDM (``lewm-train-idm``) behind stable-worldmodel's Solver protocol: ``IDMSolver`` (lewm_fast's; one IDM
pass per decision) and ``resolve_idm``, the ``idm`` argument of ``IDMSolver`` and ``CEMSolver(idm=...)``.

Both plan with ``planning.idm.IDMInit``: block 0 = IDM(z_t, z_goal, 1) (the goal taken K blocks ahead, K the IDM's
horizon), further blocks from the IDM's rollout in latent space. ``WorldModelPolicy`` replans a slice of its envs
with no env index, so there is no per-env countdown like ``lewm-eval planner=idm``'s ``remaining="countdown"``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from ...io.idm import load_idm, weights_hash
from ...planning.idm import IDMInit, IDMPolicy
from ...reference.idm import GCIDM
from ...reference.lewm import LeWM
from ._base import SolverBase, plan_costs

IDMSource = Union[GCIDM, IDMPolicy, str, os.PathLike]


def resolve_idm(model: LeWM, idm: IDMSource) -> Tuple[GCIDM, Optional[Dict[str, Any]]]:
    """-> (the GC-IDM in eval mode on the model's device, its checkpoint meta or None).

    ``idm``: a lewm-train-idm folder or ``idm.pt`` (refused unless it was trained on exactly these weights: the weights
    hash it stores), an ``IDMPolicy`` (refused unless its model has these weights) or a ``GCIDM`` (only its widths can
    be checked, when the plan is built). ValueError / CheckpointError (a ValueError) with the reason; TypeError for
    anything else.
    """
    device = next(model.parameters()).device
    if isinstance(idm, (str, os.PathLike)):
        return load_idm(idm, model, device)
    if isinstance(idm, IDMPolicy):
        theirs, ours = weights_hash(idm.model), weights_hash(model)
        if theirs != ours:
            raise ValueError(f"the IDMPolicy's world model has other weights (hash {theirs[:12]}...) than this solver's "
                             f"model ({ours[:12]}...): its IDM was trained on another model")
        idm = idm.idm
    if isinstance(idm, GCIDM):
        return idm.to(device).eval(), None
    raise TypeError(f"idm must be a lewm-train-idm folder or idm.pt, an IDMPolicy or a GCIDM, got {type(idm).__name__}")


class IDMSeeded:
    """Solver mixin: the GC-IDM of ``idm`` (resolved against a LeWM model at construction) and its plans."""

    _fast: Any
    idm: Optional[IDMSource]

    def _init_idm(self, idm: Optional[IDMSource]) -> None:
        self.idm = idm
        self._idm_net: Optional[GCIDM] = None
        self._idm_meta: Optional[Dict[str, Any]] = None
        self._plan_init: Optional[IDMInit] = None  # set by configure
        if idm is None:
            return
        if self._fast is None:
            raise TypeError(f"idm= needs a LeWM model (its encoder and predictor run the IDM's plan), got "
                            f"{type(self.model).__name__}")  # type: ignore[attr-defined]
        self._idm_net, self._idm_meta = resolve_idm(self._fast.lewm, idm)

    def configure(self, *, action_space: Any, n_envs: int, config: Any) -> None:
        """As the solver's, after building the IDM's plan for ``config.horizon`` blocks; ValueError when the IDM was
        trained for another frameskip x env action width than ``action_block`` x the env's."""
        if self._idm_net is not None:
            meta, width = self._idm_meta, int(np.prod(action_space.shape[1:]))
            if meta is not None and (int(meta["frameskip"]), int(meta["env_action_dim"])) != (config.action_block, width):
                raise ValueError(f"the IDM was trained for frameskip {meta['frameskip']} x {meta['env_action_dim']}-d "
                                 f"env actions, but this env acts with action_block {config.action_block} x {width}")
            self._plan_init = IDMInit(self._fast.lewm, self._idm_net, config.horizon)
        super().configure(action_space=action_space, n_envs=n_envs, config=config)  # type: ignore[misc]

    def _idm_plan(self, emb_ctx: torch.Tensor, goal_emb: torch.Tensor, history: Optional[torch.Tensor]) -> torch.Tensor:
        """The IDM's plan (B, horizon, A) from encoded envs (``SolverBase._encode``), float32 on the model's device."""
        if history is None:  # one context frame (see SolverBase._frames)
            history = emb_ctx.new_zeros(emb_ctx.shape[0], 0, self._fast.lewm.action_dim)
        return self._plan_init(emb_ctx, history, goal_emb)  # type: ignore[misc]


class IDMSolver(IDMSeeded, SolverBase):
    """A GC-IDM behind stable-worldmodel's Solver protocol (stable-worldmodel has no IDM solver): per ``solve``, one
    encoder pass over the envs' context and goal frames, then the IDM's plan of ``horizon`` blocks (see the module
    docstring), all envs at once. -> ``{"actions": (B, horizon, A) normalised blocks on the CPU, "costs": B floats}``,
    ``costs`` being the model's cost of each plan (the predicted last latent's squared distance to the goal latent,
    what ``CEMSolver`` minimises). Deterministic; ``init_action`` (the warm start) is ignored: every plan is the IDM's.
    ``PlanConfig(receding_horizon=1)`` executes one IDM block per decision, as ``lewm-eval planner=idm``.

    ``model``: a LeWM (stable-worldmodel's or lewm_fast's); ``idm``: see ``resolve_idm``. ``history_pairing`` as the
    other solvers': with more than one context frame the IDM's rollout needs the executed actions, so
    ``"executed"`` (and ``info_dict["action"]``); ``backend``: the rollout engine's, for ``costs``.
    """

    def __init__(self, model: Any, idm: IDMSource, device: Any = "cpu", *, history_pairing: str = "swm",
                 backend: str = "auto") -> None:
        if idm is None:
            raise TypeError("IDMSolver needs idm= (a lewm-train-idm folder or idm.pt, an IDMPolicy or a GCIDM)")
        self._init_common(model, device, 0, None, history_pairing, backend)
        self._init_idm(idm)

    @torch.inference_mode()
    def solve(self, info_dict: dict, init_action: Optional[torch.Tensor] = None) -> dict:
        del init_action
        self._cfg()
        latents = self._encode(info_dict)
        plan = self._idm_plan(*latents)
        return {"actions": plan.cpu(), "costs": plan_costs(self._latent_cost_fn(*latents), plan)}


__all__ = ["IDMSolver", "IDMSource", "resolve_idm"]
