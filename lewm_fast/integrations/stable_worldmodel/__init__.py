"""stable-worldmodel's solvers on lewm_fast: ``CEMSolver``, ``MPPISolver``, ``ICEMSolver``, ``GradientSolver``,
``LagrangianSolver``, ``PredictiveSamplingSolver`` and the discrete ``PGDSolver`` and ``CategoricalCEMSolver``; and
lewm_fast's ``IDMSolver`` (a GC-IDM from ``lewm-train-idm``, one forward pass per decision) behind the same protocol,
which also seeds ``CEMSolver(idm=...)`` (``lewm-eval planner=idm_cem``).

Each has stable-worldmodel 0.1.1's arguments, defaults, public attributes, return dict, ``callbacks=`` (its protocol,
``out["callbacks"]``; ``.callbacks`` has the recorders) and its ``Solver`` protocol (``configure(action_space=,
n_envs=, config=)``, ``action_dim``, ``n_envs``, ``horizon``, ``solve(info_dict, init_action=None)``, ``__call__``),
so ``WorldModelPolicy`` takes it in place of its own::

    from lewm_fast.integrations.stable_worldmodel import CEMSolver   # was: from stable_worldmodel.solver import ...
    solver = CEMSolver(model, num_samples=300, topk=30, n_steps=30, device="cuda", seed=1234)
    policy = swm.policy.WorldModelPolicy(solver=solver, config=plan_config, process=..., transform=...)

``model`` is any ``Costable`` (an object with ``get_cost(info_dict, candidates) -> (B, N)``): the solver then runs
stable-worldmodel's algorithm on it, computing what its solver computes (same draws from ``torch.Generator(device)
.manual_seed(seed)``). When ``model`` is a LeWM (stable-worldmodel's, or a lewm_fast ``LeWM``) the costs come from
lewm_fast's fused engine instead of ``get_cost``: ``info_dict`` then holds what ``WorldModelPolicy`` passes,
``pixels`` (B, H, 3, h, w) and ``goal`` (B, Hg, 3, h, w) after its image transform (the last goal frame is the goal),
``action`` (the action history, see ``history_pairing``); other keys are ignored. CEM and MPPI then plan on the
fused planners (one CUDA graph per plan on a GPU); the others run its loop over the engine's costs, the gradient
solvers through the fused rollout's backward. stable-worldmodel itself is never imported.

``history_pairing`` (a LeWM only) — which actions ride with the H context frames when H > 1 (at H = 1 both agree):

- ``"swm"`` (default, stable-worldmodel's ``LeWM.get_cost``): candidate blocks 0..H-1 are paired with the H context
  frames, so only ``horizon - H + 1`` steps are predicted and block 0, which the policy executes next, is treated as
  an action taken at the oldest context frame. Costs equal ``get_cost``'s on the same candidates.
- ``"executed"`` (lewm_fast's planners): frames 0..H-2 are paired with the blocks actually executed after them,
  ``info_dict["action"][:, :H-1]`` (B, ≥H-1, action_dim, normalised like the model's actions), candidate block 0
  with the current frame, and the whole horizon is predicted.

Random streams on a LeWM: with ``backend="cpu"``/``"reference"`` CEM and MPPI draw ``torch.randn(bs, num_samples,
horizon, action_dim, generator=g)`` per iteration and chunk like stable-worldmodel's, so their plans match draw for
draw, as do the solvers running its loop (iCEM's optional fused planner colours its noise differently, see
``ICEMSolver``). The default ``backend="auto"`` on CUDA
samples with Philox in the fused kernels: the same distribution, other draws.
"""

from typing import List

from . import callbacks
from ._base import HISTORY_PAIRINGS, is_lewm, prepare_init_action
from .gradient import GradientSolver, LagrangianSolver, PGDSolver
from .idm import IDMSolver, resolve_idm
from .sampling import (CategoricalCEMSolver, CEMSolver, ICEMSolver, MPPISolver, PredictiveSamplingSolver,  # noqa: F401
                       _SwmCEM, _SwmICEM, _SwmMPPI)  # the planners of history_pairing="swm" (precompile, tests)

__all__: List[str] = ["CEMSolver", "CategoricalCEMSolver", "GradientSolver", "HISTORY_PAIRINGS", "ICEMSolver",
                      "IDMSolver", "LagrangianSolver", "MPPISolver", "PGDSolver", "PredictiveSamplingSolver", "callbacks",
                      "is_lewm", "prepare_init_action", "resolve_idm"]
