"""Fused LeWM predictor rollout: folded weights + a schedule that skips work the output never sees. Inference
semantics; differentiable with respect to the actions (the folded weights are constants: no weight gradients).

What the schedule exploits (all exact up to float rounding; SPEC §1.4-1.5):
- AdaLN modulations depend only on the actions: computed once per call for every action position and every block in
  one GEMM (``1 + scale`` folded into the bias), never per step.
- Affine LayerNorms feeding a Linear (``attn.norm`` -> ``to_qkv``, ``mlp.net.0`` -> ``mlp.net.1``, final norm ->
  ``output_proj`` -> ``pred_proj.net.0``) and eval-mode BatchNorm (``pred_proj.net.1``) are folded into that Linear.
  Of the resulting ``to_qkv`` bias only the query part is kept: a key bias shifts all scores of a query equally
  (softmax-invariant) and a value bias passes through attention unchanged, so it is folded into ``to_out``'s bias.
- The action encoder (Conv1d with kernel 1 -> Linear -> SiLU -> Linear) and the predictor's ``cond_proj`` (Identity
  or Linear) before the modulations' SiLU are two linear maps around one SiLU: folded into two Linears, each with its
  activation as the epilogue (``PredictorOps.linear_act``).
- Causality: a window token whose latent and action (and those of all earlier window tokens) come from the context /
  action history is the same for every candidate; such a shared prefix runs once per environment (B rows, not B*N),
  and the candidates' tokens attend to its keys/values.
- A window's first token with no shared prefix before it attends only to itself: its attention output is its value,
  so ``to_out(value) = (W_out W_v) h``: one (Dh, Dh) GEMM instead of the inner-wide value -> to_out pair (C++ path).
- Only the last window token is read out: the last block computes keys/values for all tokens but attention output and
  MLP for the last token only; final norm and ``pred_proj`` run on that token only; on the last step the goal cost is
  fused into the last projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.predictor import CpuOps, PredictorOps, differentiating
from .state import persistent, version_of


@dataclass
class BlockWeights:
    qkv_w: torch.Tensor  # (3*inner, Dh), attn.norm affine folded in
    qkv_b: torch.Tensor  # (3*inner,): key part 0; value part 0 too unless to_out is Identity (folded into out_b)
    out_w: Optional[torch.Tensor]  # (Dh, inner); None when to_out is Identity
    out_b: Optional[torch.Tensor]
    fc1_w: torch.Tensor  # (mlp, Dh), mlp.net.0 affine folded in
    fc1_b: torch.Tensor
    fc2_w: torch.Tensor  # (Dh, mlp)
    fc2_b: torch.Tensor
    eps1: float  # norm1
    eps_attn: float  # attn.norm
    eps2: float  # norm2
    eps_mlp: float  # mlp.net.0


def _linear_wb(layer: nn.Module, name: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"{name} must be an nn.Linear, got {type(layer).__name__}")
    return layer.weight.detach().double(), None if layer.bias is None else layer.bias.detach().double()


def _fold_affine(w: torch.Tensor, b: Optional[torch.Tensor], norm: nn.LayerNorm) -> Tuple[torch.Tensor, torch.Tensor]:
    """Linear(LN(x) * g + beta) == Linear'(LN(x)) with W' = W * g, b' = b + W @ beta (float64)."""
    g = norm.weight.detach().double() if norm.weight is not None else torch.ones(w.shape[1], dtype=torch.float64, device=w.device)
    beta = norm.bias.detach().double() if norm.bias is not None else torch.zeros_like(g)
    bias = w @ beta + (b if b is not None else 0.0)
    return w * g, bias


def _layernorm(module: nn.Module, name: str) -> nn.LayerNorm:
    if not isinstance(module, nn.LayerNorm) or len(module.normalized_shape) != 1:
        raise TypeError(f"{name} must be an nn.LayerNorm over the last dimension, got {type(module).__name__}")
    return module


def _head_split(attn: nn.Module) -> Tuple[int, int]:
    """(heads, dim_head) of a predictor attention: ``heads`` is an attribute of lewm_fast's and stable-worldmodel's
    ``Attention`` alike; dim_head is read from the weights (stable-worldmodel's module keeps no ``dim_head``)."""
    heads = getattr(attn, "heads", None)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise TypeError(f"predictor attention {type(attn).__name__} must have an int attribute 'heads', got {heads!r}")
    weight = getattr(getattr(attn, "to_qkv", None), "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] % (3 * heads):
        shape = None if not isinstance(weight, torch.Tensor) else tuple(weight.shape)
        raise TypeError(f"predictor attention {type(attn).__name__} needs a to_qkv Linear of 3 x heads x dim_head "
                        f"outputs ({heads} heads), got weight shape {shape}")
    return heads, weight.shape[0] // (3 * heads)


class PackedLeWM:
    """Folded copies of a LeWM's predictor / pred_proj weights in the compute dtype, re-packed in place (so captured
    CUDA graphs stay valid) whenever a source parameter changes (``refresh_if_stale``)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.model = model
        self.dtype = dtype
        predictor = model.predictor
        tr = predictor.transformer
        self.blocks_src = list(tr.layers)
        if len(self.blocks_src) == 0:
            raise ValueError("the predictor has no transformer blocks")
        self.heads, self.dim_head = _head_split(self.blocks_src[0].attn)
        self.depth = len(self.blocks_src)
        self.num_frames = int(predictor.pos_embedding.shape[1])
        self.hidden = int(self.blocks_src[0].norm1.normalized_shape[0])
        self.input_proj, self.cond_proj, self.output_proj = tr.input_proj, tr.cond_proj, tr.output_proj
        self.mlp_act = self.blocks_src[0].mlp.net[2]
        self.final_eps = float(_layernorm(tr.norm, "predictor.transformer.norm").eps)
        # the submodules whose parameters / buffers are folded (like blocks_src, the module tree is taken as fixed;
        # a parameter or buffer replaced inside it, or changed in place, is seen by the signature)
        self._source_modules = [*model.predictor.modules(), *model.pred_proj.modules(),
                                *model.action_encoder.modules()]
        self._signature = None
        self.blocks: List[BlockWeights] = []
        self.pack()

    # ------------------------------------------------------------------ packing
    def _signature_now(self):
        return tuple(
            (t.data_ptr(), version_of(t))
            for m in self._source_modules
            for t in (*m._parameters.values(), *m._buffers.values())
            if t is not None
        )

    @property
    def signature(self) -> tuple:
        """Identity of the weights the current packing was folded from (pointers and version counters)."""
        return self._signature

    def refresh_if_stale(self) -> None:
        """Re-fold the weights (in place) when any source parameter/buffer was modified or replaced."""
        if self._signature_now() != self._signature:
            self.pack()

    def pack(self) -> None:
        with persistent():  # the packing outlives this call (and is updated in place by later ones)
            fresh = self._fold()
            if self._signature is None or not self._same_layout(fresh):
                self.__dict__.update(fresh)
            else:
                for key, value in fresh.items():
                    self._copy_into(getattr(self, key), value)
        self._signature = self._signature_now()

    def _same_layout(self, fresh) -> bool:
        def shapes(obj):
            if isinstance(obj, torch.Tensor):
                return (tuple(obj.shape), obj.dtype, obj.device)
            if isinstance(obj, (list, tuple)):
                return tuple(shapes(o) for o in obj)
            if isinstance(obj, BlockWeights):
                return tuple(shapes(getattr(obj, f)) for f in obj.__dataclass_fields__)
            return obj

        return all(shapes(getattr(self, k)) == shapes(v) for k, v in fresh.items())

    def _copy_into(self, old, new) -> None:
        if isinstance(old, torch.Tensor):
            old.copy_(new)
        elif isinstance(old, BlockWeights):
            for f in old.__dataclass_fields__:
                o, n = getattr(old, f), getattr(new, f)
                if isinstance(o, torch.Tensor):
                    o.copy_(n)
                else:
                    setattr(old, f, n)
        elif isinstance(old, (list, tuple)):
            for o, n in zip(old, new):
                self._copy_into(o, n)

    def _cast(self, t: Optional[torch.Tensor], dtype: Optional[torch.dtype] = None) -> Optional[torch.Tensor]:
        return None if t is None else t.to(dtype or self.dtype).contiguous()

    def _fold(self) -> dict:
        f32 = torch.float32
        predictor = self.model.predictor
        hidden = self.hidden
        ada_w, ada_b, blocks = [], [], []
        for i, blk in enumerate(self.blocks_src):
            pre = f"predictor.transformer.layers.{i}"
            w, b = _linear_wb(blk.adaLN_modulation[-1], pre + ".adaLN_modulation.1")
            if w.shape[0] != 6 * hidden:
                raise ValueError(f"{pre}.adaLN_modulation.1 must output 6*{hidden}, got {w.shape[0]}")
            b = (b if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)).clone()
            b[hidden:2 * hidden] += 1.0  # scale1 -> 1 + scale1
            b[4 * hidden:5 * hidden] += 1.0  # scale2 -> 1 + scale2
            ada_w.append(w)
            ada_b.append(b)
            attn, mlp = blk.attn, blk.mlp
            qkv_w, qkv_b = _fold_affine(*_linear_wb(attn.to_qkv, pre + ".attn.to_qkv"), _layernorm(attn.norm, pre + ".attn.norm"))
            inner = qkv_w.shape[0] // 3
            qkv_b[inner:2 * inner] = 0.0  # a key bias adds q.b_k to every score of a query: softmax ignores it
            if isinstance(attn.to_out, nn.Identity):
                out_w = out_b = None
            else:
                out_w, out_b = _linear_wb(attn.to_out[0], pre + ".attn.to_out.0")
                # softmax weights sum to 1, so the value bias passes through attention: fold it into to_out's bias
                out_b = (out_b if out_b is not None else 0.0) + out_w @ qkv_b[2 * inner:]
                qkv_b[2 * inner:] = 0.0
            fc1_w, fc1_b = _fold_affine(*_linear_wb(mlp.net[1], pre + ".mlp.net.1"), _layernorm(mlp.net[0], pre + ".mlp.net.0"))
            fc2_w, fc2_b = _linear_wb(mlp.net[4], pre + ".mlp.net.4")
            blocks.append(BlockWeights(
                self._cast(qkv_w), self._cast(qkv_b), self._cast(out_w), self._cast(out_b, f32),
                self._cast(fc1_w), self._cast(fc1_b), self._cast(fc2_w), self._cast(fc2_b, f32),
                float(blk.norm1.eps), float(attn.norm.eps), float(blk.norm2.eps), float(mlp.net[0].eps),
            ))
        ada_w, ada_b = torch.cat(ada_w), torch.cat(ada_b)
        on_cpu = ada_w.device.type == "cpu"
        fresh = {
            "pos": predictor.pos_embedding.detach()[0].float().contiguous(),
            "ada_w": self._cast(ada_w),
            "ada_b": self._cast(ada_b),
            # CPU: the bias as the weight of one more input column (see FusedRollout.modulations)
            "ada_wb": self._cast(torch.cat([ada_w, ada_b[:, None]], 1)) if on_cpu else None,
            "blocks": blocks,
        }
        fresh.update(self._fold_head())
        fresh.update(self._fold_actions())
        return fresh

    def _fold_actions(self) -> dict:
        """The action conditioning ``silu(cond_proj(embed(patch_embed(a))))`` as ``silu(W2 silu(W1 a + b1) + b2)``
        in float32: the kernel-1 Conv1d folded into the first Linear, ``cond_proj`` (Identity or Linear) into the
        second. ``act_w1`` None where the action encoder has another structure (then it runs as its module)."""
        none = {"act_w1": None, "act_b1": None, "act_w2": None, "act_b2": None}
        enc = self.model.action_encoder
        conv, embed = getattr(enc, "patch_embed", None), getattr(enc, "embed", None)
        if not (isinstance(conv, nn.Conv1d) and conv.kernel_size == (1,) and conv.stride == (1,)
                and conv.padding == (0,) and conv.dilation == (1,) and conv.groups == 1
                and isinstance(embed, nn.Sequential) and len(embed) == 3 and isinstance(embed[0], nn.Linear)
                and isinstance(embed[1], nn.SiLU) and isinstance(embed[2], nn.Linear)
                and isinstance(self.cond_proj, (nn.Identity, nn.Linear))):
            return none
        f64 = torch.float64
        wc = conv.weight.detach()[:, :, 0].to(f64)
        bc = conv.bias.detach().to(f64) if conv.bias is not None else torch.zeros(wc.shape[0], dtype=f64,
                                                                                   device=wc.device)
        w1, b1 = _linear_wb(embed[0], "action_encoder.embed.0")
        w2, b2 = _linear_wb(embed[2], "action_encoder.embed.2")
        w1, w2 = w1.to(f64), w2.to(f64)
        b1 = w1 @ bc + (b1.to(f64) if b1 is not None else 0.0)
        b2 = b2.to(f64) if b2 is not None else torch.zeros(w2.shape[0], dtype=f64, device=w2.device)
        if isinstance(self.cond_proj, nn.Linear):
            wp, bp = _linear_wb(self.cond_proj, "predictor.transformer.cond_proj")
            w2, b2 = wp.to(f64) @ w2, wp.to(f64) @ b2 + (bp.to(f64) if bp is not None else 0.0)
        f32 = torch.float32
        return {"act_w1": self._cast(w1 @ wc, f32), "act_b1": self._cast(b1, f32), "act_w2": self._cast(w2, f32),
                "act_b2": self._cast(b2, f32)}

    def _fold_head(self) -> dict:
        """Final LN affine -> output_proj -> pred_proj.net.0 -> BatchNorm, composed into one Linear over LN(x)."""
        f32 = torch.float32
        norm = self.model.predictor.transformer.norm
        dev = norm.weight.device if norm.weight is not None else self.model.predictor.pos_embedding.device
        d = self.hidden
        w = torch.diag(norm.weight.detach().double()) if norm.weight is not None else torch.eye(d, dtype=torch.float64, device=dev)
        b = norm.bias.detach().double() if norm.bias is not None else torch.zeros(d, dtype=torch.float64, device=dev)
        if isinstance(self.output_proj, nn.Linear):
            wl, bl = _linear_wb(self.output_proj, "predictor.transformer.output_proj")
            w, b = wl @ w, wl @ b + (bl if bl is not None else 0.0)
        elif not isinstance(self.output_proj, nn.Identity):
            raise TypeError(f"predictor.transformer.output_proj must be Identity or Linear, got {type(self.output_proj).__name__}")
        net = getattr(self.model.pred_proj, "net", None)
        fused = (
            isinstance(net, nn.Sequential) and len(net) == 4 and isinstance(net[0], nn.Linear)
            and isinstance(net[3], nn.Linear) and isinstance(net[1], (nn.BatchNorm1d, nn.Identity))
        )
        if not fused:
            # pred_proj of another structure (or Identity): run it as a module after the folded norm
            return {"head_w": self._cast(w, f32), "head_b": self._cast(b, f32), "head_act": None,
                    "head_w2": None, "head_b2": None, "head_module": self.model.pred_proj}
        wl, bl = _linear_wb(net[0], "pred_proj.net.0")
        w, b = wl @ w, wl @ b + (bl if bl is not None else 0.0)
        bn = net[1]
        if isinstance(bn, nn.BatchNorm1d):
            if bn.running_mean is None or bn.running_var is None:
                raise ValueError("pred_proj.net.1 BatchNorm1d without running statistics cannot be folded for inference")
            s = (bn.running_var.detach().double() + bn.eps).rsqrt()
            if bn.weight is not None:
                s = s * bn.weight.detach().double()
            b = (b - bn.running_mean.detach().double()) * s + (bn.bias.detach().double() if bn.bias is not None else 0.0)
            w = w * s[:, None]
        w2, b2 = _linear_wb(net[3], "pred_proj.net.3")
        return {"head_w": self._cast(w), "head_b": self._cast(b), "head_act": net[2],
                "head_w2": self._cast(w2), "head_b2": self._cast(b2, f32), "head_module": None}


def _frozen(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; in grad mode with its parameters detached (gradients reach x, never the model's parameters)."""
    if not torch.is_grad_enabled():
        return module(x)
    return torch.func.functional_call(module, {n: t.detach() for n, t in module.named_parameters()}, (x,))


class UnboundModulations:
    """Modulations (M, T, depth, 6, Dh) that require grad, unbound into one (M, Dh) view per (action position, block,
    kind). Autograd gives a slice of a tensor a zero-filled gradient of the whole tensor, summed over all slices: with
    a slice per block, kind and step that is hundreds of full-size copies of a tens-of-MB tensor; unbound, each
    window's gradient lands in its own small tensors and one stack per unbind puts them together.
    ``self[:, c0:c1]`` is the window of positions c0..c1-1 (``_mod`` reads it like the tensor)."""

    requires_grad = True

    def __init__(self, mods: torch.Tensor, parts: Optional[List[List[List[torch.Tensor]]]] = None):
        self.parts = parts if parts is not None else [
            [list(kind.unbind(0)) for kind in pos.unbind(0)] for pos in mods.permute(1, 2, 3, 0, 4).unbind(0)
        ]

    def __getitem__(self, index: Tuple[slice, slice]) -> "UnboundModulations":
        return UnboundModulations(None, self.parts[index[1]])

    def get(self, block: int, kind: int, first: int) -> torch.Tensor:
        """(M, S - first, Dh): modulation ``kind`` of ``block`` for window tokens first.."""
        return torch.stack([pos[block][kind] for pos in self.parts[first:]], 1)


def _mod(mods, block: int, kind: int, first: int = 0) -> torch.Tensor:
    """Modulation ``kind`` (0-5: shift1, mul1, gate1, shift2, mul2, gate2) of ``block`` for the window tokens first..:
    (M, S - first, Dh), a view of a tensor ``mods`` (M, S, depth, 6, Dh), or stacked from ``UnboundModulations``."""
    if isinstance(mods, UnboundModulations):
        return mods.get(block, kind, first)
    return mods[:, first:, block, kind]


def _fused_activation(act: nn.Module) -> Optional[str]:
    """The ``ops.adaln_linear`` activation computing ``act``: "gelu" / "gelu_tanh" for nn.GELU; None for any other
    module (then applied on its own after the GEMM)."""
    if isinstance(act, nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    return None


class FusedRollout:
    """The rollout schedule over ``PredictorOps``; inference semantics (dropout off, BatchNorm running statistics).
    Under grad mode with actions that require grad, every op records its backward (``ops.predictor``): the rollout
    is differentiable with respect to the actions only, the folded weights are constants (no weight gradients)."""

    def __init__(self, model: nn.Module, ops: PredictorOps, dtype: torch.dtype = torch.float32):
        self.model = model
        self.ops = ops
        self.dtype = dtype
        self.packed = PackedLeWM(model, dtype)
        self._mods_buffer: Optional[torch.Tensor] = None  # see modulations(reuse=True)
        # the GELUs that ``ops.adaln_linear`` computes in its epilogue (None: the module runs after the GEMM)
        self.mlp_activation = _fused_activation(self.packed.mlp_act)
        self.head_activation = None if self.packed.head_module is not None else _fused_activation(self.packed.head_act)
        self.whole_window = (
            isinstance(ops, CpuOps) and dtype == torch.float32 and self.mlp_activation is not None
            and all(b.out_w is not None for b in self.packed.blocks) and ops.window_blocks_available()
        )
        # ... and the prediction head (or the goal cost) in the same C++ call
        self.whole_step = self.whole_window and self.head_activation is not None
        # rollout steps add the positional embedding in the first block's first op (``blocks(pos=)``), which writes
        # the residual stream: no separate add per step (possible where input_proj is an Identity)
        self.positions_in_first_block = isinstance(self.packed.input_proj, nn.Identity) and not self.whole_window
        self._window_args_cache: Optional[tuple] = None

    # ------------------------------------------------------------------ pieces
    def condition(self, act_emb: torch.Tensor) -> torch.Tensor:
        """act_emb (R, T, D) -> the modulations' input ``silu(cond_proj(act_emb))`` (R, T, Dh) in the compute dtype."""
        return F.silu(_frozen(self.packed.cond_proj, act_emb)).to(self.dtype)

    def condition_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """actions (R, T, A) -> ``condition(embed_actions(actions))`` (R, T, Dh) in the compute dtype: two folded
        Linears with their SiLUs as epilogues (``PackedLeWM._fold_actions``) where they exist and nothing is
        differentiated, else the modules."""
        p = self.packed
        if p.act_w1 is None or differentiating(actions):
            return self.condition(self.embed_actions(actions))
        h = self.ops.linear_act(actions.float(), p.act_w1, p.act_b1, "silu")
        return self.ops.linear_act(h, p.act_w2, p.act_b2, "silu", self.dtype)

    def modulations(self, c: torch.Tensor, reuse: bool = False) -> torch.Tensor:
        """c (R, T, Dh) from ``condition`` -> AdaLN (shift, 1+scale, gate) x 2 for every block: (R, T, depth, 6, Dh),
        in one GEMM.

        reuse: on CPU, write into this rollout's persistent buffer (valid until the next ``reuse`` call). The tensor
        is tens of MB per CEM iteration, above glibc's mmap threshold: a fresh one costs as much in page faults as
        its GEMM."""
        p = self.packed
        shape = (*c.shape[:2], p.depth, 6, p.hidden)
        if not (reuse and c.device.type == "cpu") or differentiating(c):  # no autograd through out=...
            return self.ops.linear(c, p.ada_w, p.ada_b).view(shape)
        rows, n = c.shape[0] * c.shape[1], p.ada_w.shape[0]
        if self._mods_buffer is None or self._mods_buffer.numel() < rows * n or self._mods_buffer.dtype != c.dtype:
            with persistent():
                self._mods_buffer = torch.empty(rows * n, dtype=c.dtype)
        out = self._mods_buffer[:rows * n].view(rows, n)
        # [c | 1] @ [W | b]^T: ATen's addmm into `out` would first broadcast-copy the bias over all of it
        c_one = c.new_empty(rows, c.shape[-1] + 1)
        c_one[:, :-1] = c.reshape(rows, -1)
        c_one[:, -1] = 1.0
        return torch.mm(c_one, p.ada_wb.t(), out=out).view(shape)

    def embed_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """(R, T, A) -> (R, T, D) with the model's own action encoder (a small share of the work)."""
        return _frozen(self.model.action_encoder, actions)

    def blocks(
        self,
        x: torch.Tensor,
        mods: torch.Tensor,
        prefix_qkv: Optional[List[torch.Tensor]] = None,
        mode: str = "all",
        qkv_out: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        window_qkv: Optional[List[torch.Tensor]] = None,
        keep_qkv: Optional[List[torch.Tensor]] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run the transformer blocks on the residual stream x (M, S, Dh) in place (out of place when differentiating:
        see ``differentiating``).

        mods (M, S, depth, 6, Dh); prefix_qkv: per block (B, P, 3*inner) keys/values of the window tokens before x's
        (B divides M: shared by each group of M // B rows). mode "all": every token through every block; "last": the
        last block only updates the last token; "kv": stop after the last block's to_qkv (a prefix pass).
        qkv_out (depth, M, S, 3*inner): where each block's to_qkv output is written (kept for later steps).
        pos (S, Dh): x is the window's latents (read only) and the residual stream is x + pos, formed by the first
        block's first op (``tokens`` without its own launch; input_proj must be an Identity; not when
        differentiating). window_qkv: per block (M, P, 3*inner), the to_qkv outputs of the P window tokens before
        x's as earlier steps computed them, under autograd (``qkv_out`` / ``prefix_qkv`` write and read a buffer in
        place, which autograd cannot follow): x's tokens attend over ``cat(window_qkv[i], qkv)``. keep_qkv: a list
        that receives each block's (window) qkv, for the next step's window_qkv. Returns (rows of the residual stream
        that are final, per-block qkv).
        """
        p, ops = self.packed, self.ops
        act = self.mlp_activation
        qkvs: List[torch.Tensor] = []
        for i, w in enumerate(p.blocks):
            last = i == p.depth - 1
            embed = {}
            if i == 0 and pos is not None:
                embed = dict(pos=pos, x_out=torch.empty(x.shape, device=x.device, dtype=torch.float32))
            qkv = ops.adaln_linear(x, _mod(mods, i, 0), _mod(mods, i, 1), w.eps1, w.eps_attn, w.qkv_w, w.qkv_b,
                                   out=None if qkv_out is None else qkv_out[i], **embed)
            if embed:
                x = embed["x_out"]
            if window_qkv is not None:
                qkv = torch.cat([window_qkv[i], qkv], 1)
            if keep_qkv is not None:
                keep_qkv.append(qkv)
            if mode == "kv":
                qkvs.append(qkv)
                if last:
                    break
            nq = 1 if (last and mode == "last") else x.shape[1]
            prefix = None if prefix_qkv is None else prefix_qkv[i]
            first = x.shape[1] - nq
            xs, ms = x[:, first:], [_mod(mods, i, k, first) for k in range(2, 6)]  # gate1, shift2, mul2, gate2
            # the residual ops update xs in place (a new tensor when differentiating): carry on with what they return
            if w.out_w is None:  # to_out is an Identity
                xs = ops.gated_residual(xs, ops.window_attention(qkv, p.heads, prefix, nq), None, None, ms[0])
            else:
                xs = ops.attention_residual(xs, qkv, p.heads, w.out_w, w.out_b, ms[0], prefix)
            f = ops.adaln_linear(xs, ms[1], ms[2], w.eps2, w.eps_mlp, w.fc1_w, w.fc1_b, act or "none")
            if act is None:
                f = p.mlp_act(f)
            xs = ops.gated_residual(xs, f, w.fc2_w, w.fc2_b, ms[3])
            if last:
                return xs, qkvs
            x = xs  # every token went through this block
        return x, qkvs

    def _window_args(self) -> tuple:
        """(weights, eps, head, packed) of ``CpuOps.window_blocks`` for the current packing (cached per packing)."""
        p = self.packed
        cache = self._window_args_cache
        if cache is not None and cache[0] == p.signature:
            return cache[1]
        with persistent():  # a cache: it outlives this call
            return self._make_window_args()

    def _make_window_args(self) -> tuple:
        p = self.packed
        inner = p.heads * p.dim_head  # keys/values carry no bias (see the module docstring): pass the query bias
        weights = []
        for b in p.blocks:
            # to_out(value) of a token that attends only to itself: (Dh, Dh), folded in float64
            ov_w = (b.out_w.double() @ b.qkv_w[2 * inner:].double()).to(b.out_w.dtype)
            weights += [b.qkv_w, b.qkv_b[:inner], b.out_w, b.out_b, b.fc1_w, b.fc1_b, b.fc2_w, b.fc2_b, ov_w]
        eps = [e for b in p.blocks for e in (b.eps1, b.eps_attn, b.eps2, b.eps_mlp)]
        head = None
        if self.whole_step:
            head = (p.head_w, p.head_b, p.head_w2, p.head_b2, p.final_eps, p.head_act.approximate)
        packed = self.ops.window_pack(weights, p.heads, head)
        self._window_args_cache = (p.signature, (weights, eps, head, packed))
        return weights, eps, head, packed

    def last_token(self, x: torch.Tensor, mods: torch.Tensor, prefix_qkv: Optional[List[torch.Tensor]],
                   qkv_out: Optional[torch.Tensor] = None, pos: Optional[torch.Tensor] = None,
                   window_qkv: Optional[List[torch.Tensor]] = None,
                   keep_qkv: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """All blocks of a rollout step; returns the last token's residual stream (M, 1, Dh). ``qkv_out``, ``pos``,
        ``window_qkv``, ``keep_qkv``: see ``blocks`` (the whole-window C++ path, which keeps no keys / values, runs
        without them)."""
        if not self.whole_window or differentiating(x, mods):
            return self.blocks(x, mods, prefix_qkv, "last", qkv_out, pos, window_qkv, keep_qkv)[0]
        weights, eps, head, packed = self._window_args()
        p = self.packed
        packed = packed if head is None else None  # packed with the head's weights: only for calls with the head
        return self.ops.window_blocks(x, mods, prefix_qkv, weights, eps, p.heads, p.mlp_act.approximate, packed=packed)

    def step(
        self,
        x: torch.Tensor,
        mods: torch.Tensor,
        prefix_qkv: Optional[List[torch.Tensor]],
        goal: Optional[torch.Tensor] = None,
        out: Optional[torch.Tensor] = None,
        qkv_out: Optional[torch.Tensor] = None,
        pos: Optional[torch.Tensor] = None,
        window_qkv: Optional[List[torch.Tensor]] = None,
        keep_qkv: Optional[List[torch.Tensor]] = None,
    ) -> torch.Tensor:
        """One rollout step: the blocks on the window x (M, S, Dh) and the head on its last token -> the next latents
        (M, D) float32 (written into ``out`` (M, D), a strided view, when given), or with ``goal`` (B, D) the costs
        (M,) of those latents. ``qkv_out``, ``pos``, ``window_qkv``, ``keep_qkv``: see ``blocks`` (not on the
        whole-window C++ path)."""
        if self.whole_step and not differentiating(x, mods):
            weights, eps, head, packed = self._window_args()
            p = self.packed
            y = self.ops.window_blocks(
                x, mods, prefix_qkv, weights, eps, p.heads, p.mlp_act.approximate, head, goal, packed
            )
            return y if out is None or goal is not None else out.copy_(y)
        x_last = self.last_token(x, mods, prefix_qkv, qkv_out, pos, window_qkv, keep_qkv)
        if goal is not None:
            return self.head_cost(x_last, goal)
        return self.head(x_last, None if out is None else out.unsqueeze(1))[:, 0]

    def head_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm + folded pred_proj up to its activation: x (M, S, Dh) -> (M, S, hidden) or, for a pred_proj
        without the MLP structure, its full output."""
        p = self.packed
        if self.head_activation is not None:
            return self.ops.adaln_linear(x, None, None, p.final_eps, 0.0, p.head_w, p.head_b, self.head_activation)
        n = F.layer_norm(x, (x.shape[-1],), eps=p.final_eps).to(p.head_w.dtype)
        y = self.ops.linear(n, p.head_w, p.head_b)
        if p.head_module is not None:
            return _frozen(p.head_module, y.float().reshape(-1, y.shape[-1])).view(*y.shape[:-1], -1)
        return p.head_act(y)

    def head(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (M, S, Dh) -> next latents (M, S, D) float32, written into ``out`` (M, S, D) when given (one fused
        projection on the Triton backend: no cast or copy launches)."""
        p = self.packed
        h = self.head_hidden(x)
        if p.head_module is not None:
            y = h.float()
        elif out is None:
            return self.ops.linear(h, p.head_w2, p.head_b2).float()
        else:
            y = self.ops.project_into(out, h, p.head_w2, p.head_b2)
            if y is out:
                return out
        return y if out is None else out.copy_(y)

    def head_cost(self, x: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """x (M, 1, Dh) -> squared distance of the predicted latent to goal (B, D), summed over D: (M,) float32."""
        p = self.packed
        h = self.head_hidden(x)
        if p.head_module is not None:
            return (h.float().view(goal.shape[0], -1, h.shape[-1]) - goal.unsqueeze(1)).square().sum(-1).reshape(-1)
        return self.ops.goal_cost(h.reshape(-1, h.shape[-1]), p.head_w2, p.head_b2, goal)

    def tokens(self, latents: torch.Tensor, first_pos: int) -> torch.Tensor:
        """latents (M, S, D) at window positions first_pos.. -> residual stream (M, S, Dh) float32."""
        x = latents + self.packed.pos[first_pos:first_pos + latents.shape[1]]
        return _frozen(self.packed.input_proj, x).contiguous()

    def _kv_cache(self, m: int, window: int, mods: torch.Tensor) -> Optional[torch.Tensor]:
        """Keys / values kept across the steps of one rollout, (depth, M, window - 1, 3*inner) in the compute dtype,
        or None where not used (the whole-window C++ path, which recomputes the window in one call, and autograd).

        While the window still starts at its first token (the first ``window`` steps of a plan from one context
        frame) a step's window is the previous one plus one token, at the same positions: causal attention makes the
        earlier tokens' keys and values at every block what the previous step computed. So such a step runs the
        new token only (M rows instead of M x S) and attends to the kept ones, exactly (SPEC §1.4). Under autograd
        the same reuse runs out of place (``blocks(window_qkv=, keep_qkv=)``)."""
        if self.whole_window or differentiating(mods) or window < 2:
            return None
        p = self.packed
        return torch.empty(p.depth, m, window - 1, 3 * p.heads * p.dim_head, device=mods.device, dtype=self.dtype)

    # ------------------------------------------------------------------ entry points
    def predict(self, emb: torch.Tensor, act_emb: torch.Tensor) -> torch.Tensor:
        """LeWM.predict: emb, act_emb (B, T, D) -> pred_proj(predictor(emb, act_emb)) (B, T, D)."""
        self.packed.refresh_if_stale()
        x = self.tokens(emb.float(), 0)
        x, _ = self.blocks(x, self.modulations(self.condition(act_emb.float())), None, "all")
        return self.head(x)

    @torch.no_grad()
    def context(self, emb_ctx: torch.Tensor, action_history: torch.Tensor) -> "PlanContext":
        """Keys/values of the window tokens every candidate shares (context latents paired with history actions), for
        each rollout step that has such a prefix. Depends on the context and the weights only: one per plan (no
        gradient flows into it)."""
        p = self.packed
        p.refresh_if_stale()
        b, h_ctx, _ = emb_ctx.shape
        emb = emb_ctx.float()
        mods_h = self.modulations(self.condition_actions(action_history)) if h_ctx > 1 else None  # (B, H-1, ...)
        prefixes: List[List[torch.Tensor]] = []
        for t in range(p.num_frames):  # a prefix exists while the window start is before token h_ctx - 1
            start = max(h_ctx + t - p.num_frames, 0)
            shared = h_ctx - 1 - start  # window tokens start..h_ctx-2
            if shared <= 0:
                break
            xp = self.tokens(emb[:, start:start + shared], 0)
            prefixes.append(self.blocks(xp, mods_h[:, start:start + shared], None, "kv")[1])
        return PlanContext(emb_ctx, action_history, (version_of(emb_ctx), version_of(action_history)), prefixes,
                           p.signature)

    def run(
        self,
        emb_ctx: torch.Tensor,
        action_history: torch.Tensor,
        candidates: torch.Tensor,
        goal: Optional[torch.Tensor] = None,
        context: Optional["PlanContext"] = None,
        paired: bool = False,
    ) -> torch.Tensor:
        """emb_ctx (B,H,D), action_history (B,H-1,A), candidates (B,N,T,A) shared context per environment.

        goal None: the latents (B, N, H+T, D). goal (B, D): the costs (B, N) of the last latent. ``context``: from
        ``self.context(emb_ctx, action_history)`` (computed here when None).

        paired: stable-worldmodel's pairing (``RolloutEngine.paired_costs``): candidate blocks 0..H-1 ride with the H
        context frames (action_history and context are unused: no window token is shared by all candidates) and
        T - H + 1 latents are predicted: (B, N, T+1, D) latents, or the costs of the last.
        """
        p = self.packed
        if paired:
            p.refresh_if_stale()
            prefixes: List[List[torch.Tensor]] = []
        else:
            if context is not None:
                context.check(emb_ctx, action_history)
                p.refresh_if_stale()
            if context is None or context.weights_signature != p.signature:
                context = self.context(emb_ctx, action_history)
            prefixes = context.prefixes
        b, n, t_hor, _ = candidates.shape
        h_ctx = emb_ctx.shape[1]
        lag = 0 if paired else h_ctx - 1  # window token j rides with candidate block j - lag
        steps = t_hor - (h_ctx - 1 - lag)  # latents to predict
        m = b * n
        w = p.num_frames
        mods_c = self.modulations(self.condition_actions(candidates.reshape(m, t_hor, -1)), reuse=True)  # (M, T, depth, 6, Dh)
        if differentiating(mods_c):
            mods_c = UnboundModulations(mods_c)
        lat = emb_ctx.new_empty(b, n, h_ctx + steps, emb_ctx.shape[-1], dtype=torch.float32)
        lat[:, :, :h_ctx] = emb_ctx.detach().unsqueeze(1)  # constants: gradients reach the candidates only
        lat = lat.view(m, h_ctx + steps, -1)
        cache = self._kv_cache(m, w, mods_c)
        # growing windows reuse the kept keys / values: in place in `cache`, or under autograd out of place (`kept`)
        reuse_window = cache is not None or (differentiating(mods_c) and w >= 2)
        kept: Optional[List[torch.Tensor]] = None
        embed_in_block = self.positions_in_first_block and not differentiating(mods_c)
        cached = 0  # leading window tokens whose keys / values sit in `cache` (see _kv_cache)
        cost = None
        for t in range(steps):
            end = h_ctx + t  # latents 0..end-1 exist; predict latent `end`
            prefix = prefixes[t] if t < len(prefixes) else None
            shared = 0 if prefix is None else prefix[0].shape[1]
            first = max(end - w, 0) + shared  # first per-candidate token; its action is candidate first - lag
            qkv_out = window_qkv = keep_qkv = None
            if reuse_window and shared == 0 and end <= w:  # the window starts at token 0 and has not slid
                if cached:  # run the new token only, attending to the kept tokens' keys / values
                    if cache is not None:
                        prefix = [c[:, :cached] for c in cache]
                    else:
                        window_qkv = kept
                    first = shared = cached
                if end < w:  # the next step's window starts there too: keep this step's keys / values
                    if cache is not None:
                        qkv_out = cache[:, :, first:end]
                    else:
                        keep_qkv = []
                    cached = end
            c0 = first - lag
            x, pos = lat[:, first:end], None
            if embed_in_block:  # the first block adds the positions (and writes the residual stream)
                pos = p.pos[shared:shared + end - first]
            else:
                x = self.tokens(x, shared)
            mods = mods_c[:, c0:c0 + end - first]  # (M, S, depth, 6, Dh)
            window = dict(qkv_out=qkv_out, pos=pos, window_qkv=window_qkv, keep_qkv=keep_qkv)
            if goal is not None and t == steps - 1:
                cost = self.step(x, mods, prefix, goal.detach().float(), **window)
            else:
                self.step(x, mods, prefix, out=lat[:, end], **window)
            if keep_qkv is not None:
                kept = keep_qkv
        if goal is not None:
            return cost.view(b, n)
        return lat.view(b, n, h_ctx + steps, -1)


@dataclass
class PlanContext:
    """What a rollout needs from the context alone (``RolloutEngine.prepare``): the context tensors it was made from
    and, per rollout step with a shared window prefix, that prefix's per-block keys/values (B, P, 3*inner)."""

    emb_ctx: torch.Tensor
    action_history: torch.Tensor
    versions: Tuple[int, int]
    prefixes: List[List[torch.Tensor]]
    weights_signature: tuple

    def check(self, emb_ctx: torch.Tensor, action_history: torch.Tensor) -> None:
        """Raise unless this context was prepared from these very tensors, unmodified since (host-side check)."""
        if emb_ctx is not self.emb_ctx or action_history is not self.action_history:
            raise ValueError("context was prepared from other emb_ctx / action_history tensors: call prepare() with these")
        if (version_of(emb_ctx), version_of(action_history)) != self.versions:
            raise ValueError("emb_ctx or action_history was modified in place after prepare(): prepare the context again")
