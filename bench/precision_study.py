"""Precision by evidence (issue 23): what bfloat16 and TF32 rollouts do to CEM planning, emulated on the CPU.

On a GPU the fused rollout (``RolloutEngine`` / ``CEMPlanner`` on the Triton backend) can run float32 with exact IEEE
dots (``precision="ieee"``, the parity mode and today's default), float32 with TF32 tensor-core dots
(``precision="tf32"``), float32 with 3xTF32 (``"tf32x3"``), or ``dtype=torch.bfloat16``. This script runs the *same
fused schedule* (``planning.fused_predictor.FusedRollout``, the code path the GPU runs: shared context prefix,
last-token-only last block, folded weights, pre-norms fused into the following GEMM, attention fused into ``to_out``,
goal cost fused into the last GEMM) on the CPU, with the ops (``ops.predictor.PredictorOps``) replaced by
``EmulatedOps``, which reproduce the GPU kernels' operand and output roundings, and compares costs, elite sets, plans
and success rates against float32 IEEE on the same candidates.

What is emulated, per mode (``MODES``):

- ``fp32-ieee`` (the baseline): the fused schedule on plain-PyTorch float32 ops, no rounding.
- ``tf32``: what ``precision="tf32"`` changes: the dots of the fused Triton kernels (``adaln_linear``: ``to_qkv``,
  ``mlp.net.1``, the head's first Linear; ``attention_residual``: ``attn.to_out``; ``gated_residual``: ``mlp.net.4``;
  ``goal_cost``: the head's last Linear on the final step) multiply operands rounded to TF32 (10 explicit mantissa
  bits, round to nearest, ties away, as ``cvt.rna.tf32.f32``) and accumulate in fp32. A product of two TF32 numbers is
  exact in fp32, so an fp32 matmul of the rounded operands is the tensor-core product. The cuBLAS GEMMs the kernels
  leave to ``PredictorOps.linear`` (the AdaLN modulations; the head's last Linear on the steps before the last) stay
  exact fp32, as they do on CUDA while ``torch.backends.cuda.matmul.allow_tf32`` is False (PyTorch's default).
  Attention scores / softmax / PV are elementwise fp32 FMAs in the kernels (no tensor cores): fp32 here too.
- ``tf32-rz``: as ``tf32`` with operands truncated to TF32 (low 13 bits dropped). Triton's plain ``tf32`` dot inserts no
  rounding instruction (its ``cvt.rna`` appears only in the tf32x3 split), so the tensor cores read fp32 registers /
  shared memory and ignore the low mantissa bits: truncation is the likely behaviour of the ``"tf32"`` kernels
  (not verified on hardware); cuBLAS/cuDNN TF32 paths may round to nearest instead.
- ``tf32x3``: each fused-kernel dot as Triton's ``input_precision="tf32x3"``: a_big = tf32(a), a_small =
  tf32(a - a_big) (same for w), acc = a_small@w_big + a_big@w_small + a_big@w_big.
- ``tf32-global``: ``tf32`` plus ``allow_tf32=True`` everywhere: the engine's cuBLAS GEMMs and the model's own
  ``nn.Linear`` / ``Conv1d`` layers (action encoder, ``cond_proj``, ``input_proj``) on TF32-rounded operands.
- ``fp32+cudnn-tf32``: the baseline plus the action encoder's ``Conv1d`` (k=1) on TF32 operands: what an fp32 CUDA
  run gets if cuDNN picks a TF32 algorithm for it (``torch.backends.cudnn.allow_tf32`` defaults to True, and lewm_fast
  does not change it), whatever the engine's precision.
- ``bf16``: exactly the tensors ``FusedRollout(dtype=torch.bfloat16)`` on ``TritonOps`` holds in bf16: the folded
  weights and biases of the bf16 GEMMs (``ada_w/b``, ``qkv_w/b``, ``out_w``, ``fc1_w/b``, ``fc2_w``, ``head_w/b``,
  ``head_w2``; ``out_b``, ``fc2_b``, ``head_b2`` stay fp32), the AdaLN modulations (a bf16 cuBLAS output), the
  pre-norm output as the fused GEMM's A operand (``a.to(w.dtype)``: RNE), the ``to_qkv`` output, the attention output
  as ``to_out``'s A operand, ``mlp.net.1``'s output after its GELU (GELU on the fp32 accumulator, one rounding at the
  store), the head's hidden layer, and on the rollout steps before the last the predicted latent itself (``head``
  runs ``PredictorOps.linear``, i.e. cuBLAS with a bf16 output, ``head_b2`` cast to bf16 first). Products of bf16
  operands are exact in fp32; accumulation is fp32; ``gated_residual`` / ``attention_residual`` add ``gate * (acc +
  b)`` into the fp32 residual stream unrounded; ``goal_cost`` reduces ``(acc + b - goal)^2`` in fp32. Residual stream,
  ``input_proj`` / ``cond_proj`` / action encoder (the model's fp32 modules), LayerNorm statistics, softmax and costs
  are fp32. The CEM distribution and refit are fp32 in every mode.
- ``fp32-cpu-kernels``: the engine's own CPU path (C++ whole-window blocks, MKL packed GEMMs): float32 again, only
  summation order and fusion differ from the baseline: the noise floor of "any change of float32 summation order".

What is not emulated: the GPU's accumulation order (tile sizes, K slices, FMA contraction) and its ``exp`` / ``erf`` /
``rsqrt`` (each a few fp32 ulp; ``fp32-cpu-kernels`` shows what such differences do); Philox sampling and the fused
Triton refit (every mode here samples with the same seeded ``torch.randn`` stream, so differences come from the
rollout numerics alone); the ViT encoder of observations and goals, fp32 in every mode (the rollout dtype does not
touch it; with ``allow_tf32=True`` it would run in TF32 too). The emulation follows the ops ``FusedRollout`` calls
when it ran (source hashes are recorded in the JSON); ``check_ops_interface`` refuses to run if ``PredictorOps`` grows
an op the emulation does not cover.

``check-interpreter`` runs the real bf16 Triton kernels in the Triton interpreter (``TRITON_INTERPRET=1``) on a few
candidate sets and compares them with the emulation switched to the interpreter's two deviations from the GPU (fp32
A operands multiplied unrounded, fp32->bf16 stores truncated): agreement checks that the emulation rounds the same
tensors in the same places as the kernels.

Run (CPU; parts merge into one JSON, ``report`` writes the Markdown next to it; uncontended 2-core times: metrics
~1 min, plans ~1 min per context, eval ~3 min per fp32 mode and ~2.5x that per emulated mode, check ~1 min)::

    # the model's training data, re-collected bit for bit (normalization.json records this path; from another checkout
    # the held-out episodes are only used if the file is at /work/main/runs/default_model/two_room.h5)
    lewm-collect env=two_room episodes=200 image_size=64 seed=0 out=runs/default_model/two_room.h5
    python bench/precision_study.py metrics --contexts 16
    python bench/precision_study.py plans --contexts 8
    python bench/precision_study.py eval --modes fp32-cpu-kernels,bf16 --episodes 50   # also: tf32, tf32-rz, ...
    TRITON_INTERPRET=1 python bench/precision_study.py check-interpreter --contexts 2 --candidates 8
    python bench/precision_study.py report
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lewm_fast.ops.predictor import PredictorOps, activate
from lewm_fast.planning import CEMPlanner, RolloutEngine
from lewm_fast.planning.fused_predictor import FusedRollout

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "precision-study-2026-12-07.json"
CHECKPOINT = str(ROOT / "lewm_fast" / "assets" / "two_room")
EVAL_SEED = 100000  # lewm-eval's default seed: episode e draws its start/goal (and planner noise) from seed + e

# the ops FusedRollout calls; a new one would bypass the emulation, so refuse to run rather than report wrong numbers
EMULATED_OPS = {"adaln_layernorm", "adaln_linear", "attention_residual", "gated_residual", "goal_cost", "linear",
                "linear_act", "project_into", "window_attention"}


# ---------------------------------------------------------------------------------------------------- roundings
def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> nearest TF32 value (10 explicit mantissa bits), ties away from zero (``cvt.rna.tf32.f32``)."""
    x = x.float().contiguous()
    i = x.view(torch.int32)
    r = ((i + 0x1000) & ~0x1FFF).view(torch.float32)
    return torch.where(torch.isfinite(x), r, x)


def trunc_tf32(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> TF32 by dropping the low 13 mantissa bits (round toward zero)."""
    x = x.float().contiguous()
    return (x.view(torch.int32) & ~0x1FFF).view(torch.float32)


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> nearest bf16 value (RNE), kept as fp32."""
    return x.to(torch.bfloat16).float()


@dataclass(frozen=True)
class Mode:
    dtype: torch.dtype  # FusedRollout's compute dtype (what PackedLeWM casts the folded weights to)
    dots: str  # the fused Triton GEMMs: "ieee" | "tf32" | "tf32-rz" | "tf32x3" | "bf16"; "native": the C++ CPU ops
    cublas_tf32: bool = False  # also the cuBLAS GEMMs (PredictorOps.linear) and the model's nn.Linear in TF32
    conv_tf32: bool = False  # the action encoder's Conv1d on TF32 operands (cuDNN's default on CUDA)
    about: str = ""


MODES: Dict[str, Mode] = {
    "fp32-ieee": Mode(torch.float32, "ieee", about="float32, exact dots: the baseline (GPU parity mode)"),
    "fp32-cpu-kernels": Mode(torch.float32, "native", about="float32 on the C++ CPU kernels: summation-order floor"),
    "fp32+cudnn-tf32": Mode(torch.float32, "ieee", conv_tf32=True,
                            about="float32 + the action encoder's Conv1d in TF32 (cuDNN's default)"),
    "tf32": Mode(torch.float32, "tf32", about="precision='tf32': fused-kernel dots on TF32 operands (round to nearest)"),
    "tf32-rz": Mode(torch.float32, "tf32-rz", about="precision='tf32', operands truncated to TF32 instead"),
    "tf32x3": Mode(torch.float32, "tf32x3", about="precision='tf32x3': 3xTF32 fused-kernel dots"),
    "tf32-global": Mode(torch.float32, "tf32", cublas_tf32=True, conv_tf32=True,
                        about="tf32 + allow_tf32=True: cuBLAS GEMMs, the model's Linear / Conv1d layers in TF32 too"),
    "bf16": Mode(torch.bfloat16, "bf16", about="dtype=bfloat16: bf16 weights / GEMM and attention inputs, fp32 "
                                               "accumulate, fp32 residual stream / LayerNorm statistics / costs"),
}


# ---------------------------------------------------------------------------------------------------- emulated ops
class EmulatedOps(PredictorOps):
    """``PredictorOps`` with the GPU's numerics (see the module docstring): the Triton ops (``adaln_linear``,
    ``attention_residual``, ``gated_residual``, ``goal_cost``) multiply as ``tl.dot`` does for ``dots``; ``linear`` is
    cuBLAS (bf16 in/out for bf16 operands; float32 exact unless ``cublas_tf32``). Counts calls per op."""

    def __init__(self, dots: str, cublas_tf32: bool = False, interpreter: bool = False):
        if dots not in ("ieee", "tf32", "tf32-rz", "tf32x3", "bf16"):
            raise ValueError(dots)
        self.dots, self.cublas_tf32 = dots, cublas_tf32
        # interpreter: what the Triton interpreter does on CPU tensors instead of the GPU's numerics (a check of the
        # emulated dataflow only): fp32 A operands of the fused dots are not rounded (UPCAST), and fp32 -> bf16 stores
        # truncate instead of rounding to nearest even
        self.interpreter = interpreter
        self.calls: Counter = Counter()
        self._cache: dict = {}

    def _mm(self, x2: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], dots: str) -> torch.Tensor:
        """x2 (R, K) @ w (N, K)^T (+ bias) -> fp32 (R, N): operands as the tensor cores see them, fp32 accumulate."""
        if w.dtype == torch.bfloat16:
            if x2.dtype != torch.bfloat16 and not self.interpreter:
                raise AssertionError(f"bf16 GEMM got {x2.dtype} @ {w.dtype}: the schedule changed, update the emulation")
            dots = "bf16"
        elif x2.dtype != torch.float32 or w.dtype != torch.float32:
            raise AssertionError(f"GEMM got {x2.dtype} @ {w.dtype}")
        a = x2.float()
        bias = None if bias is None else self._weight(bias, "ieee")
        if dots in ("tf32", "tf32-rz"):
            a = (round_tf32 if dots == "tf32" else trunc_tf32)(a)
        elif dots == "tf32x3":
            a_big = round_tf32(a)
            a_small = round_tf32(a - a_big)
            b_big, b_small = self._weight(w, "tf32"), self._weight(w, "tf32-small")
            y = a_small @ b_big.t()
            y += a_big @ b_small.t()
            y += a_big @ b_big.t()
            return y if bias is None else y.add_(bias)
        # ieee, tf32 (rounded operands: their products are exact in fp32), or bf16 operands (exact products too)
        b = self._weight(w, dots if dots.startswith("tf32") else "ieee")
        return a @ b.t() if bias is None else torch.addmm(bias, a, b.t())

    def _weight(self, w: torch.Tensor, kind: str) -> torch.Tensor:
        """w as fp32 ("ieee"), rounded to TF32 ("tf32" / "tf32-rz") or its TF32 remainder ("tf32-small"), cached per
        weight tensor and version (the packed weights are fixed during a study)."""
        key = (w.data_ptr(), tuple(w.shape), w.dtype, w._version, kind)
        hit = self._cache.get(key)
        if hit is None:
            f = w.float().contiguous()
            if kind == "tf32":
                f = round_tf32(f)
            elif kind == "tf32-rz":
                f = trunc_tf32(f)
            elif kind == "tf32-small":
                f = round_tf32(f - round_tf32(f))
            hit = self._cache[key] = (w, f)  # holds w: its data_ptr cannot be reused while cached
        return hit[1]

    def linear(self, x, weight, bias, out=None):
        """cuBLAS GEMM (``PredictorOps.linear`` on CUDA): output in the input dtype, a bias cast to it first."""
        self.calls["linear"] += 1
        x2 = x.reshape(-1, x.shape[-1])
        if bias is not None and bias.dtype != x2.dtype:
            bias = bias.to(x2.dtype)
        dots = self.dots if (self.cublas_tf32 and self.dots.startswith("tf32")) else "ieee"
        y = self._mm(x2, weight, bias, dots).to(x2.dtype).view(*x.shape[:-1], weight.shape[0])
        if out is not None:
            out.copy_(y)
            return out
        return y

    def linear_act(self, x, weight, bias, activation, out_dtype=None):
        """``TritonOps.linear_act`` (the folded action conditioning): float32 operands at the dots' float32 precision
        (3xTF32 when the result is stored in 16 bits: the bf16 modes' second projection; exact in the interpreter,
        which ignores TF32), fp32 bias and activation, one rounding to ``out_dtype`` at the store."""
        self.calls["linear_act"] += 1
        out_dtype = out_dtype or x.dtype
        dots = "ieee" if self.dots == "bf16" else self.dots
        dots = "tf32x3" if dots == "ieee" and out_dtype.itemsize == 2 and not self.interpreter else dots
        y = self._mm(x.reshape(-1, x.shape[-1]).float(), weight, bias, dots)
        y = activate(y, activation)
        return self._store(y, out_dtype).view(*x.shape[:-1], weight.shape[0])

    def project_into(self, out, a, weight, bias):
        """``kernels/gated_residual.py`` without the gate (the head's last Linear into the latent buffer): fp32
        accumulate + fp32 bias, one rounding to out's dtype at the store."""
        self.calls["project_into"] += 1
        y = self._mm(a.reshape(-1, a.shape[-1]), weight, bias, self.dots)
        return out.copy_(self._store(y, out.dtype).view(out.shape))

    def adaln_layernorm(self, x, shift, mul, eps1, eps2, out_dtype, weight=None, bias=None):
        """fp32 statistics and arithmetic, output rounded to ``out_dtype``."""
        self.calls["adaln_layernorm"] += 1
        return super().adaln_layernorm(x.float(), shift.float(), mul.float(), eps1, eps2, out_dtype,
                                       None if weight is None else weight.float(), None if bias is None else bias.float())

    def adaln_linear(self, x, shift, mul, eps1, eps2, weight, bias, activation="none", out=None, pos=None,
                     x_out=None):
        """``kernels/adaln_linear.py``: the normalised rows in fp32, cast to the weight's dtype as the dot's A operand,
        fp32 accumulate + bias, the GELU on the fp32 accumulator, one rounding to the weight's dtype at the store
        (into ``out`` when given: the rollout's key / value cache); ``x + pos`` in fp32 into ``x_out`` first."""
        self.calls["adaln_linear"] += 1
        if pos is not None:
            x = torch.add(x.float(), pos.float(), out=x_out)
        d = x.shape[-1]
        if shift is None:
            h = F.layer_norm(x.float(), (d,), eps=eps1)
        else:
            h = F.layer_norm(torch.addcmul(shift.float(), F.layer_norm(x.float(), (d,), eps=eps1), mul.float()), (d,),
                             eps=eps2)
        h = self._operand(h, weight.dtype)
        y = self._mm(h.reshape(-1, d), weight, bias, self.dots)
        y = self._store(activate(y, activation), weight.dtype).view(*x.shape[:-1], weight.shape[0])
        return y if out is None else out.copy_(y)

    def _operand(self, a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """An fp32 value computed in registers becoming a dot operand of ``dtype`` (``a.to(w.dtype)``)."""
        if self.interpreter and dtype == torch.bfloat16:
            return a.float()  # the interpreter's UPCAST dot multiplies the fp32 value as it is
        return a.to(dtype)

    def _store(self, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A Triton kernel's fp32 result stored as ``dtype`` (RNE on the GPU; truncation in the interpreter)."""
        if self.interpreter and dtype == torch.bfloat16:
            return (y.float().contiguous().view(torch.int32) & ~0xFFFF).view(torch.float32).to(dtype)
        return y.to(dtype)

    def window_attention(self, qkv, heads, prefix_qkv=None, num_queries=None):
        """fp32 scores, softmax and PV from the stored qkv (elementwise FMAs in the Triton kernel: no tensor cores),
        output stored in qkv's dtype."""
        self.calls["window_attention"] += 1
        return self._store(self._attention_fp32(qkv, heads, prefix_qkv, num_queries), qkv.dtype)

    def _attention_fp32(self, qkv, heads, prefix_qkv, num_queries):
        pre = None if prefix_qkv is None else prefix_qkv.float()
        return PredictorOps.window_attention(self, qkv.float(), heads, pre, num_queries)

    def attention_residual(self, x, qkv, heads, weight, bias, gate, prefix_qkv=None):
        """``kernels/attention_residual.py``: attention in fp32 (as ``window_attention``), cast to the weight's dtype as
        the dot's A operand, fp32 accumulate + fp32 bias, gated and added to the fp32 residual stream."""
        self.calls["attention_residual"] += 1
        att = self._operand(self._attention_fp32(qkv, heads, prefix_qkv, x.shape[1]), weight.dtype)
        y = self._mm(att.reshape(-1, att.shape[-1]), weight, bias, self.dots).view(*x.shape[:-1], -1)
        return x.addcmul_(gate.float(), y)

    def gated_residual(self, x, a, weight, bias, gate):
        """``kernels/gated_residual.py``: the fp32 accumulator (+ fp32 bias) is gated and added to x, never rounded."""
        self.calls["gated_residual"] += 1
        if weight is None:
            return x.addcmul_(gate.float(), a.float())
        y = self._mm(a.reshape(-1, a.shape[-1]), weight, bias, self.dots).view(*a.shape[:-1], -1)
        return x.addcmul_(gate.float(), y)

    def goal_cost(self, hidden, weight, bias, goal):
        """``kernels/goal_cost.py``: fp32 accumulator + fp32 bias - goal, squared and summed in fp32."""
        self.calls["goal_cost"] += 1
        y = self._mm(hidden, weight, bias, self.dots)
        b = goal.shape[0]
        return (y.view(b, -1, y.shape[-1]) - goal.float().unsqueeze(1)).square().sum(-1).reshape(-1)


class TF32Modules(TorchFunctionMode):
    """Rounds the operands of ``F.linear`` / ``conv1d`` calls (the model's own fp32 layers: action encoder,
    ``cond_proj``, ``input_proj``) to TF32, as cuBLAS / cuDNN with TF32 allowed do. ``conv_only``: Conv1d only."""

    def __init__(self, conv_only: bool):
        super().__init__()
        self.funcs = (F.conv1d, torch.conv1d) if conv_only else (F.conv1d, torch.conv1d, F.linear)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.funcs and args[0].dtype == torch.float32:
            args = (round_tf32(args[0]), round_tf32(args[1]), *args[2:])
        return func(*args, **kwargs)


class EmulatedRollout(FusedRollout):
    """``FusedRollout`` taking the GPU's modulation GEMM (``ops.linear``, not the CPU-only buffer-reusing ``mm``) and,
    for the TF32-module modes, the model's own layers on TF32 operands."""

    def __init__(self, model, ops: EmulatedOps, mode: Mode):
        super().__init__(model, ops, mode.dtype)
        self.mode = mode
        if self.whole_window or self.whole_step:
            raise AssertionError("the emulated rollout must run op by op")

    def _modules(self):
        if self.mode.cublas_tf32 or self.mode.conv_tf32:
            return TF32Modules(conv_only=not self.mode.cublas_tf32)
        return contextlib.nullcontext()

    def modulations(self, c, reuse=False):
        return super().modulations(c, reuse=False)

    def context(self, *args, **kwargs):
        with self._modules():
            return super().context(*args, **kwargs)

    def run(self, *args, **kwargs):
        with self._modules():
            return super().run(*args, **kwargs)


def check_ops_interface() -> None:
    public = {n for n in vars(PredictorOps) if not n.startswith("_") and callable(getattr(PredictorOps, n))}
    if public != EMULATED_OPS:
        raise RuntimeError(f"PredictorOps now has ops {sorted(public)}; the emulation covers {sorted(EMULATED_OPS)}: "
                           "update EmulatedOps before trusting its numbers")


def make_engine(model, mode: str) -> RolloutEngine:
    """A ``RolloutEngine`` on the CPU whose fused rollout runs ``mode``'s numerics."""
    m = MODES[mode]
    engine = RolloutEngine(model, backend="cpu")
    if m.dots != "native":
        engine.fused = EmulatedRollout(model, EmulatedOps(m.dots, m.cublas_tf32), m)
        engine.dtype = m.dtype
    return engine


def make_planner(model, mode: str, seed: int, **settings) -> CEMPlanner:
    kw = dict(num_samples=300, topk=30, n_steps=30, horizon=5, receding_horizon=5, var_scale=1.0)
    kw.update(settings)
    return CEMPlanner(model, backend="cpu", seed=seed, engine=make_engine(model, mode), **kw)


# ---------------------------------------------------------------------------------------------------- data
def eval_config(overrides: List[str]):
    from lewm_fast.config import compose_config

    return compose_config("eval", [f"checkpoint={CHECKPOINT}", "save_episodes=0", "device=cpu", *overrides],
                          open_keys=("env_kwargs",))


def contexts(evaluation, n: int) -> List[dict]:
    """The first planning context of lewm-eval's episodes 0..n-1 (its goal draws: seed 100000 + e): encoded start frame
    (1,1,D) and goal (1,D), both fp32 (the encoder is fp32 in every mode)."""
    from lewm_fast.evaluation.mpc import render_state
    from lewm_fast.reference.vit import preprocess_frames

    env, model = evaluation.env, evaluation.model
    out = []
    for e in range(n):
        seed = int(evaluation.cfg.seed) + e
        start, goal_state = evaluation.goals(seed)
        if env.unwrapped.is_success(start, goal_state):
            continue  # lewm-eval plans nothing for an episode that starts at its goal
        frame = np.array(env.render(), copy=True)
        goal_frame = render_state(env, goal_state)
        obs = preprocess_frames(torch.from_numpy(frame)).unsqueeze(0).unsqueeze(0)
        goal = preprocess_frames(torch.from_numpy(goal_frame)).unsqueeze(0)
        with torch.no_grad():
            emb_ctx = model.encode(obs).float()
            goal_emb = model.encode(goal.unsqueeze(1))[:, 0].float()
        out.append({"episode": e, "seed": seed, "emb_ctx": emb_ctx, "goal_emb": goal_emb})
    return out


# ---------------------------------------------------------------------------------------------------- metrics
def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def compare_costs(c: torch.Tensor, ref: torch.Tensor, k: int = 30) -> dict:
    elite = set(ref.argsort()[:k].tolist())
    mine = set(c.argsort()[:k].tolist())
    rel = ((c.double() - ref.double()).abs() / ref.double().abs().clamp_min(1e-30))
    ref_elite = ref.sort().values
    gap = float(ref_elite[k] - ref_elite[k - 1])  # the margin that decides the last elite
    return {
        "elite_overlap": len(elite & mine) / k,
        "spearman": spearman(c, ref),
        "rel_err_median": float(rel.median()),
        "rel_err_p95": float(rel.quantile(0.95)),
        "rel_err_max": float(rel.max()),
        "best_same": int(c.argmin()) == int(ref.argmin()),
        "elite_boundary_gap_rel": gap / float(ref_elite[k - 1]),
    }


def summarize_rows(rows: List[dict]) -> dict:
    keys = ["elite_overlap", "spearman", "rel_err_median", "rel_err_p95", "rel_err_max"]
    out = {"sets": len(rows)}
    for key in keys:
        v = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()), "median": float(np.median(v))}
    out["best_same_fraction"] = float(np.mean([r["best_same"] for r in rows]))
    out["elite_overlap_1.0_fraction"] = float(np.mean([r["elite_overlap"] == 1.0 for r in rows]))
    return out


def sample_set(mean: torch.Tensor, std: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """(1,T,A) mean/std -> (1,n,T,A) candidates, candidate 0 = mean (as the planners sample)."""
    cand = torch.randn((1, n, *mean.shape[1:]), generator=gen) * std.unsqueeze(1) + mean.unsqueeze(1)
    cand[:, 0] = mean
    return cand


def run_metrics(args, results: dict) -> None:
    torch.manual_seed(0)
    ev = Evaluation_(eval_config([]))
    model = ev.model
    ctxs = contexts(ev, args.contexts)
    modes = [m for m in args.modes.split(",")] if args.modes else [m for m in MODES if m != "fp32-ieee"]
    engines = {m: make_engine(model, m) for m in ["fp32-ieee", *modes]}
    base_planner = make_planner(model, "fp32-cpu-kernels", EVAL_SEED)  # only gives realistic CEM distributions
    iters = [0, 9, 29]  # candidate sets: iteration 1 (the prior), 10 and 30 (the last) of the fp32 plan's CEM
    rows: Dict[str, Dict[str, list]] = {m: {f"iter{i + 1}": [] for i in iters} for m in modes}
    t0 = time.perf_counter()
    timing = Counter()
    for ci, ctx in enumerate(ctxs):
        hist = torch.zeros(1, 0, model.action_dim)
        base_planner.reseed(ctx["seed"])
        _, diag = base_planner.plan(ctx["emb_ctx"], ctx["goal_emb"], latent=True, return_diagnostics=True)
        gen = torch.Generator().manual_seed(ctx["seed"] + 7)
        for i in iters:
            if i == 0:
                mean, std = torch.zeros(1, 5, model.action_dim), torch.ones(1, 5, model.action_dim)
            else:
                mean, std = diag.mean[i - 1], diag.std[i - 1]  # the distribution iteration i samples from
            cand = sample_set(mean, std, 300, gen)
            costs = {}
            for m, eng in engines.items():
                s = time.perf_counter()
                costs[m] = eng.costs(ctx["emb_ctx"], hist, ctx["goal_emb"], cand)[0]
                timing[m] += time.perf_counter() - s
            for m in modes:
                row = compare_costs(costs[m], costs["fp32-ieee"])
                row["episode"] = ctx["episode"]
                rows[m][f"iter{i + 1}"].append(row)
        print(f"metrics: context {ci + 1}/{len(ctxs)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    calls = {m: dict(e.fused.ops.calls) for m, e in engines.items() if isinstance(e.fused.ops, EmulatedOps)}
    results["candidate_metrics"] = {
        "model": CHECKPOINT,
        "contexts": len(ctxs),
        "episodes": [c["episode"] for c in ctxs],
        "candidates_per_set": 300,
        "topk": 30,
        "horizon": 5,
        "sets": "per context: the distributions CEM samples at iteration 1 (N(0, 1) prior), 10 and 30 of an fp32 "
                "plan (C++ CPU kernels, lewm-eval's seed), 300 candidates each, candidate 0 = the mean",
        "reference": "fp32-ieee",
        "summary": {m: {k: summarize_rows(v) for k, v in rows[m].items()} for m in modes},
        "summary_all_sets": {m: summarize_rows([r for v in rows[m].values() for r in v]) for m in modes},
        "rows": rows,
        "cost_eval_seconds": dict(timing),
        "op_calls": calls,
    }


# ---------------------------------------------------------------------------------------------------- plans
def run_plans(args, results: dict) -> None:
    ev = Evaluation_(eval_config([]))
    model, codec = ev.model, ev.codec
    ctxs = contexts(ev, args.contexts)
    modes = args.modes.split(",") if args.modes else ["fp32-cpu-kernels", "tf32", "tf32-rz", "bf16"]
    base = make_planner(model, "fp32-ieee", EVAL_SEED)
    other = make_planner(model, "fp32-cpu-kernels", EVAL_SEED)  # float32 with another seed (fast kernels)
    planners = {m: make_planner(model, m, EVAL_SEED) for m in modes}
    judge = make_engine(model, "fp32-ieee")  # scores every final plan with the exact model
    rows: Dict[str, list] = {m: [] for m in [*modes, "fp32, other seed"]}
    t0 = time.perf_counter()
    seconds = Counter()
    for ci, ctx in enumerate(ctxs):
        hist = torch.zeros(1, 0, model.action_dim)

        def plan(p, seed, name):
            p.reseed(seed)
            s = time.perf_counter()
            out = p.plan(ctx["emb_ctx"], ctx["goal_emb"], latent=True)
            seconds[name] += time.perf_counter() - s
            return out

        ref = plan(base, ctx["seed"], "fp32-ieee")
        ref_cost = float(judge.costs(ctx["emb_ctx"], hist, ctx["goal_emb"], ref[:, None])[0, 0])
        ref_env = codec.to_env(ref[0, 0])
        others = {m: plan(p, ctx["seed"], m) for m, p in planners.items()}
        others["fp32, other seed"] = plan(other, ctx["seed"] + 10**6, "fp32, other seed")
        for m, pl in others.items():
            cost = float(judge.costs(ctx["emb_ctx"], hist, ctx["goal_emb"], pl[:, None])[0, 0])
            env_a = codec.to_env(pl[0, 0])
            rows[m].append({
                "episode": ctx["episode"],
                "first_env_action_dist": float(np.linalg.norm(env_a[0] - ref_env[0])),  # env units (action space)
                "first_block_dist": float((pl[0, 0] - ref[0, 0]).norm()),  # normalised units, 5 env actions
                "plan_dist": float((pl - ref).norm()),
                "first_env_action_cos": float(np.dot(env_a[0], ref_env[0]) /
                                              max(np.linalg.norm(env_a[0]) * np.linalg.norm(ref_env[0]), 1e-12)),
                "plan_cost_fp32": cost,
                "ref_plan_cost_fp32": ref_cost,
                "plan_cost_rel_change": (cost - ref_cost) / ref_cost,
                "identical": bool(torch.equal(pl, ref)),
            })
        print(f"plans: context {ci + 1}/{len(ctxs)} ({time.perf_counter() - t0:.0f} s)", flush=True)

    def summ(rs):
        out = {"plans": len(rs), "identical_fraction": float(np.mean([r["identical"] for r in rs]))}
        for key in ("first_env_action_dist", "first_block_dist", "plan_dist", "first_env_action_cos",
                    "plan_cost_rel_change"):
            v = np.array([r[key] for r in rs])
            out[key] = {"mean": float(v.mean()), "median": float(np.median(v)), "max": float(v.max()),
                        "min": float(v.min())}
        return out

    results["plans"] = {
        "model": CHECKPOINT,
        "planner": "CEMPlanner 300 samples x 30 iterations, top 30, horizon 5, var_scale 1 (lewm-eval's cem), CPU "
                   "torch.randn noise seeded with lewm-eval's episode seed in every mode",
        "contexts": len(ctxs),
        "reference": "fp32-ieee, same seed; 'fp32, other seed' = a float32 planner (C++ CPU kernels) with another "
                     "noise seed: the sampling spread every precision effect should be compared with",
        "action_space": "Two-Room env actions, box [-1, 1]^2 per env step (first_env_action_dist: L2 in those units)",
        "summary": {m: summ(rs) for m, rs in rows.items()},
        "rows": rows,
        "plan_seconds_mean": {m: s / len(ctxs) for m, s in seconds.items()},
    }


# ---------------------------------------------------------------------------------------------------- success rate
def wilson(successes: int, n: int, z: float = 1.96) -> List[float]:
    if n == 0:
        return [float("nan"), float("nan")]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [centre - half, centre + half]


def run_eval(args, results: dict) -> None:
    """lewm-eval's protocol (its defaults: dataset goals from the run's held-out episodes, goal 25 steps ahead,
    budget 50, history 1, CEM 300 x 30, seed 100000) with the planner's engine swapped for the emulated one."""
    store = results.setdefault("success", {"protocol": "lewm-eval defaults (checkpoint=" + CHECKPOINT + ", "
                                           "episodes=N): dataset goals from the run's held-out episodes, goal_offset 25,"
                                           " budget 50, history_len 1, CEM 300 x 30, seed 100000", "modes": {}})
    for mode in args.modes.split(","):
        cfg = eval_config([f"episodes={args.episodes}", f"out=runs/precision_study/eval-{mode}"])
        ev = Evaluation_(cfg)
        p = ev.planner
        ev.planner = make_planner(ev.model, mode, int(cfg.seed), num_samples=p.num_samples, topk=p.topk,
                                  n_steps=p.n_steps, horizon=p.horizon, receding_horizon=p.receding_horizon,
                                  var_scale=p.var_scale)
        t0 = time.perf_counter()
        summary = ev.run()
        n, s = int(summary["episodes"]), int(summary["successes"])
        store["modes"][mode] = {
            "episodes": n, "successes": s, "success_rate": s / n, "ci95_wilson": wilson(s, n),
            "already_at_goal": summary["already_at_goal"], "plans": summary["plans"],
            "mean_steps_successful": summary["mean_steps_successful"],
            "plan_latency_mean_s": summary["plan_latency_mean_s"],
            "wall_s": time.perf_counter() - t0,
            "per_episode": [{k: r[k] for k in ("episode", "success", "steps")} for r in summary["per_episode"]],
        }
        print(f"eval {mode}: {s}/{n} ({time.perf_counter() - t0:.0f} s)", flush=True)
        save(results, Path(args.out))


def Evaluation_(cfg):
    from lewm_fast.evaluation.runner import Evaluation

    return Evaluation(cfg)


# ---------------------------------------------------------------------------------------------------- cross-check
def run_check_interpreter(args, results: dict) -> None:
    """bf16 emulation vs the real kernels (Triton interpreter on CPU tensors): costs of a small candidate set."""
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("check-interpreter needs TRITON_INTERPRET=1 in the environment")
    ev = Evaluation_(eval_config([]))
    model = ev.model
    ctxs = contexts(ev, args.contexts)
    rows = []
    interp_engine = make_engine(model, "bf16")
    interp_engine.fused = EmulatedRollout(model, EmulatedOps("bf16", interpreter=True), MODES["bf16"])
    for ctx in ctxs:
        gen = torch.Generator().manual_seed(ctx["seed"])
        cand = torch.randn((1, args.candidates, 5, model.action_dim), generator=gen)
        hist = torch.zeros(1, 0, model.action_dim)
        got = {}
        for name, eng in (("triton-interpreter-bf16", RolloutEngine(model, backend="triton", dtype=torch.bfloat16)),
                          ("triton-interpreter-fp32", RolloutEngine(model, backend="triton")),
                          ("emulated-bf16", make_engine(model, "bf16")),
                          ("emulated-bf16-as-interpreter", interp_engine),
                          ("fp32-ieee", make_engine(model, "fp32-ieee"))):
            got[name] = eng.costs(ctx["emb_ctx"], hist, ctx["goal_emb"], cand)[0].double()
        ref = got["fp32-ieee"]

        def rel(a, b):
            return float(((a - b).abs() / b.abs()).max())

        rows.append({
            "episode": ctx["episode"],
            "emulated_as_interpreter_vs_triton_bf16_rel_max": rel(got["emulated-bf16-as-interpreter"],
                                                                  got["triton-interpreter-bf16"]),
            "emulated_bf16_vs_triton_bf16_rel_max": rel(got["emulated-bf16"], got["triton-interpreter-bf16"]),
            "triton_bf16_vs_fp32_rel_max": rel(got["triton-interpreter-bf16"], ref),
            "emulated_bf16_vs_fp32_rel_max": rel(got["emulated-bf16"], ref),
            "triton_fp32_vs_fp32_rel_max": rel(got["triton-interpreter-fp32"], ref),
        })
        print(rows[-1], flush=True)
    results["interpreter_check"] = {
        "what": "costs of random N(0,1) candidate sets from the real bf16 Triton kernels run by the Triton interpreter "
                "(TRITON_INTERPRET=1) vs the emulation. The interpreter is not the GPU: its fused dots multiply the fp32 "
                "A operand unrounded (UPCAST) and its fp32->bf16 stores truncate (the GPU rounds to nearest even). "
                "'emulated-bf16-as-interpreter' is the emulation with those two interpreter behaviours switched on: "
                "its agreement with the interpreter (to fp32 summation-order noise) checks that the emulation rounds "
                "the same tensors at the same places as the kernels; 'emulated-bf16' (RNE, rounded A operands) is "
                "the GPU model used everywhere else",
        "candidates": args.candidates,
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------------- report
def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"


def report(results: dict) -> str:
    """The Markdown summary of whatever parts the JSON holds."""
    runs = results.get("runs", {})
    first = next(iter(runs.values()), {})
    lines = [
        "# Precision study: bf16 / TF32 vs float32 IEEE for CEM planning (CPU emulation)",
        "",
        f"Machine: {first.get('cpu', '?')} ({first.get('cores', '?')} cores, shared with other jobs), torch "
        f"{first.get('torch', '?')}, Python {first.get('python', '?')}; run {first.get('date', '?')} on commit "
        f"{first.get('commit', '?')[:10]} with a working tree that had uncommitted changes in "
        f"{', '.join(sorted({ln.split()[-1] for r in runs.values() for ln in r.get('dirty_sources', [])})) or 'none'} "
        "(source hashes in the JSON). Made by `bench/precision_study.py` (its docstring says exactly what is "
        "emulated); model: the shipped Two-Room LeWM (`lewm_fast/assets/two_room`).",
        "",
        "Modes: " + "; ".join(f"`{k}`: {v}" for k, v in results.get("modes", {}).items()) + ".",
        "",
    ]
    cm = results.get("candidate_metrics")
    if cm:
        lines += [
            f"## Candidate sets ({cm['contexts']} contexts x 3 sets of 300 candidates, horizon 5)",
            "",
            "Costs of the same candidates in each mode against `fp32-ieee`. Sets per context: the first CEM "
            "iteration's prior N(0, 1), and iterations 10 and 30 of the fp32 plan (narrow, near-optimal: the hard "
            "case for ranking). Elite overlap = |top-30 ∩ top-30 of fp32| / 30.",
            "",
            "| mode | elite overlap mean (min) | sets with identical elites | same best candidate | Spearman mean (min) "
            "| rel. cost error median / p95 / max |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for m, v in cm["summary_all_sets"].items():
            lines.append(
                f"| `{m}` | {v['elite_overlap']['mean']:.4f} ({v['elite_overlap']['min']:.3f}) | "
                f"{100 * v['elite_overlap_1.0_fraction']:.0f} % | {100 * v['best_same_fraction']:.0f} % | "
                f"{v['spearman']['mean']:.6f} ({v['spearman']['min']:.6f}) | "
                f"{_f(v['rel_err_median']['median'])} / {_f(v['rel_err_p95']['median'])} / {_f(v['rel_err_max']['max'])} |")
        lines += ["", "Elite overlap by set (mean, min):", "",
                  "| mode | " + " | ".join(next(iter(cm["summary"].values())).keys()) + " |",
                  "| --- |" + " --- |" * len(next(iter(cm["summary"].values())))]
        for m, sets in cm["summary"].items():
            lines.append(f"| `{m}` | " + " | ".join(
                f"{v['elite_overlap']['mean']:.4f} ({v['elite_overlap']['min']:.3f})" for v in sets.values()) + " |")
        lines.append("")
    pl = results.get("plans")
    if pl:
        lines += [
            f"## Whole plans ({pl['contexts']} contexts, CEM 300 x 30)",
            "",
            "Each mode plans from the same context, goal and noise seed as the `fp32-ieee` reference; the last row is "
            "the fp32 planner with another noise seed: the spread that sampling alone gives. First action: the first "
            "env action of the plan (Two-Room actions lie in [-1, 1]^2), L2 distance to the reference's. Plan cost: "
            "the final plan's cost under the exact fp32 model, relative change vs the reference plan's.",
            "",
            "| mode | identical plans | first action dist. mean / median / max | cos(first actions) min | "
            "plan cost change mean / max |",
            "| --- | --- | --- | --- | --- |",
        ]
        for m, v in pl["summary"].items():
            d = v["first_env_action_dist"]
            c = v["plan_cost_rel_change"]
            lines.append(f"| `{m}` | {100 * v['identical_fraction']:.0f} % | {d['mean']:.3f} / {d['median']:.3f} / "
                         f"{d['max']:.3f} | {v['first_env_action_cos']['min']:.3f} | {100 * c['mean']:+.1f} % / "
                         f"{100 * c['max']:+.1f} % |")
        lines.append("")
    sr = results.get("success")
    if sr:
        lines += ["## Success rate (lewm-eval protocol)", "", sr["protocol"] + ".", "",
                  "| mode | successes | success rate | 95 % Wilson interval | plans | mean steps (successful) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for m, v in sr["modes"].items():
            lo, hi = v["ci95_wilson"]
            lines.append(f"| `{m}` | {v['successes']}/{v['episodes']} | {100 * v['success_rate']:.0f} % | "
                         f"{100 * lo:.1f}-{100 * hi:.1f} % | {v['plans']} | {v['mean_steps_successful']:.1f} |")
        lines.append("")
    ic = results.get("interpreter_check")
    if ic:
        lines += ["## Cross-check against the Triton kernels (interpreter)", "", ic["what"] + ".", "",
                  "| episode | emulation-as-interpreter vs interpreter | emulated bf16 vs interpreter | interpreter "
                  "bf16 vs fp32 | emulated bf16 vs fp32 | interpreter fp32 vs fp32 |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in ic["rows"]:
            lines.append(f"| {r['episode']} | {r['emulated_as_interpreter_vs_triton_bf16_rel_max']:.2e} | "
                         f"{r['emulated_bf16_vs_triton_bf16_rel_max']:.2e} | {r['triton_bf16_vs_fp32_rel_max']:.2e} | "
                         f"{r['emulated_bf16_vs_fp32_rel_max']:.2e} | {r['triton_fp32_vs_fp32_rel_max']:.2e} |")
        lines += ["", "(max relative cost difference over the set's candidates)", ""]
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- bookkeeping
def provenance() -> dict:
    def sh(*cmd):
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.rstrip()

    cpu = next((ln.split(":", 1)[1].strip() for ln in sh("lscpu").splitlines() if ln.startswith("Model name")),
               platform.processor())
    files = ["lewm_fast/planning/fused_predictor.py", "lewm_fast/planning/rollout.py", "lewm_fast/ops/predictor.py"]
    return {
        "date": str(date.today()),
        "cpu": cpu,
        "cores": int(sh("nproc") or 0),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": sh("git", "rev-parse", "HEAD"),
        "sources_sha256": {f: hashlib.sha256((ROOT / f).read_bytes()).hexdigest()[:16] for f in files},
        "dirty_sources": sh("git", "status", "--porcelain", "--", *files).splitlines(),
        "threads": torch.get_num_threads(),
    }


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["metrics", "plans", "eval", "check-interpreter", "report"])
    ap.add_argument("--contexts", type=int, default=32, help="lewm-eval episodes whose first context/goal are used")
    ap.add_argument("--modes", default=None, help="comma-separated subset of " + ",".join(MODES))
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--candidates", type=int, default=32, help="check-interpreter: candidates per set")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    check_ops_interface()
    out = Path(args.out)
    results = load(out)
    results.setdefault("modes", {m: MODES[m].about for m in MODES})
    results.setdefault("runs", {})[args.part] = provenance()
    t0 = time.perf_counter()
    if args.part == "report":
        out.with_suffix(".md").write_text(report(results))
        print(f"report -> {out.with_suffix('.md')}")
        return 0
    {"metrics": run_metrics, "plans": run_plans, "eval": run_eval, "check-interpreter": run_check_interpreter}[
        args.part](args, results)
    results["runs"][args.part]["wall_s"] = time.perf_counter() - t0
    save(results, out)
    print(f"{args.part}: {time.perf_counter() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
