"""``warmup`` and the AOT check know every planner kind of lewm-eval's registry: each kind's plan launches, recorded
on meta tensors (structure only: which kernels, on which device; nothing is compiled or timed)."""

from __future__ import annotations

import collections

import pytest
import torch

from lewm_fast import planning
from lewm_fast.evaluation.planners import PLANNERS as REGISTRY
from lewm_fast.reference.idm import GCIDM
from lewm_fast.precompile import DISCRETE, GRADIENT, PLANNERS, record_plan_launches, warmup, warmup_launches

FORWARD = {"_adaln_linear_kernel", "_attention_residual_kernel", "_gated_residual_kernel"}
BACKWARD = {"_window_attention_kernel", "_window_attention_backward_kernel"}  # the rollout backward's attention


def _planner(kind, model):
    a = model.action_dim
    common = dict(num_samples=8, horizon=3, receding_horizon=3, seed=0)
    box = (-torch.ones(a), torch.ones(a))
    if kind == "idm":
        return planning.IDMPolicy(model, GCIDM(model.latent_dim, a, 32, 2, horizon=3).eval())
    if kind in ("cem", "idm_cem"):
        return planning.CEMPlanner(model, topk=2, n_steps=2, **common)
    if kind == "icem":
        return planning.ICEMPlanner(model, topk=2, n_steps=2, **common)
    if kind == "mppi":
        return planning.MPPIPlanner(model, topk=2, n_steps=2, **common)
    if kind == "gd":
        return planning.GradientPlanner(model, n_steps=2, **common)
    if kind == "lagrangian":
        return planning.LagrangianPlanner(model, n_steps=2, n_outer_steps=2, **common)
    if kind == "predictive_sampling":
        return planning.PredictiveSamplingPlanner(model, **common)
    if kind == "pgd":
        return planning.PGDPlanner(model, box, bins=4, n_steps=2, **common)
    assert kind == "categorical_cem"
    return planning.CategoricalCEMPlanner(model, box, bins=4, topk=2, n_steps=2, **common)


def test_warmup_knows_every_registered_kind():
    assert set(REGISTRY) - {"idm", "idm_cem"} == set(PLANNERS)  # idm: no Triton launch; idm_cem: a CEMPlanner


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_warmup_records_each_planner_kinds_launches(tiny_model, kind):
    planner = _planner(kind, tiny_model)
    assert warmup(planner).launches == 0  # a CPU model: nothing to compile, and no TypeError
    launches = warmup_launches(planner, n_envs=2, history=2)
    names = collections.Counter(x.name for x in launches)
    if kind == "idm":
        assert launches == []  # plain PyTorch
        return
    assert FORWARD <= set(names), names
    assert all(a.device.type == "meta" for x in launches for a in x.args if isinstance(a, torch.Tensor))
    if kind in GRADIENT:
        assert BACKWARD <= set(names)
        assert "_philox_normal_kernel" in names  # the starting samples' noise
    else:
        assert not BACKWARD & set(names) and not any("backward" in n for n in names)
        assert "_goal_cost_kernel" in names
    if kind in ("cem", "idm_cem", "mppi", "icem", "predictive_sampling"):
        assert "_elite_refit_sample_kernel" in names
    if kind == "categorical_cem":
        assert names["_philox_normal_kernel"] == 2  # one draw per iteration (uniforms through the normal CDF)
    # nothing of the real model was touched
    assert all(p.device.type == "cpu" for p in tiny_model.parameters())


def test_gradient_kinds_record_the_backward_per_step(tiny_model):
    one = record_plan_launches(tiny_model, 2, 2, "gd", num_samples=4, horizon=3)
    assert sum(x.name == "_window_attention_backward_kernel" for x in one) > 0
    pgd = record_plan_launches(tiny_model, 2, 2, "pgd", num_samples=4, horizon=3, bins=5)
    assert collections.Counter(x.name for x in pgd) == collections.Counter(x.name for x in one)


def test_discrete_kinds_take_bins_and_the_adapter_pairing_only_for_its_planners(tiny_model):
    for kind in DISCRETE:
        assert warmup_launches(tiny_model, n_envs=1, history=1, planner=kind, num_samples=4, topk=2, horizon=2,
                               bins=6)
    with pytest.raises(ValueError, match="history_pairing='swm'"):
        record_plan_launches(tiny_model, 1, 2, "gd", num_samples=4, horizon=3, history_pairing="swm")
    with pytest.raises(ValueError, match="planner must be one of"):
        record_plan_launches(tiny_model, 1, 2, "nope")
    with pytest.raises(TypeError, match="come from the planner"):
        warmup_launches(_planner("pgd", tiny_model), bins=3)
    with pytest.raises(TypeError, match="unknown planner settings"):
        warmup(tiny_model, samples=8)


@pytest.mark.parametrize("kind", ["categorical_cem", "predictive_sampling"])
def test_captured_kinds_read_nothing_back_to_the_host(tiny_model, kind):
    """A plan captured in a CUDA graph must not sync with the host: no op of its device work reads a value back."""
    from lewm_fast.precompile import record_plan_ops

    ops = record_plan_ops(tiny_model, n_steps=2, n_envs=2, history=2, planner=kind, num_samples=8, topk=2, horizon=3)
    names = {getattr(e, "name", None) for _, e in ops}
    assert "_goal_cost_kernel" in names and "device_to_host" not in names
