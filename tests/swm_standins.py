"""Stand-ins for stable-worldmodel's LeWM module classes (``stable_worldmodel.wm.lewm``), for compatibility tests
without stable-worldmodel installed.

Written for these tests, they reproduce what lewm_fast may rely on: the same class names, constructor arguments,
attributes (e.g. ``Attention`` keeps ``heads``, ``scale``, ``dropout``, ``norm``, ``attend``, ``to_qkv``, ``to_out`` and
*no* ``dim_head``; ``Predictor`` keeps ``dim_head``), submodule tree, state-dict keys and forward computations, and
stable-worldmodel's dict-based ``LeWM.encode(info)``. They are deliberately not lewm_fast's own modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    """Pre-norm causal self-attention; the head width is implied by to_qkv (no ``dim_head`` attribute)."""

    def __init__(self, dim, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.dropout = dropout
        self.norm = nn.LayerNorm(dim)
        self.attend = nn.Softmax(dim=-1)
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        project = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project else nn.Identity()

    def forward(self, x, causal=True):
        b, t, _ = x.shape
        q, k, v = (part.reshape(b, t, self.heads, -1).transpose(1, 2) for part in self.to_qkv(self.norm(x)).chunk(3, -1))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=causal)
        return self.to_out(out.transpose(1, 2).reshape(b, t, -1))


class ConditionalBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, mlp_dim, dropout=0.0):
        super().__init__()
        self.attn = Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout)
        self.mlp = FeedForward(dim, mlp_dim, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class Transformer(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim, depth, heads, dim_head, mlp_dim, dropout=0.0,
                 block_class=ConditionalBlock):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_dim)
        self.layers = nn.ModuleList([block_class(hidden_dim, heads, dim_head, mlp_dim, dropout) for _ in range(depth)])
        self.input_proj = nn.Linear(input_dim, hidden_dim) if input_dim != hidden_dim else nn.Identity()
        self.cond_proj = nn.Linear(input_dim, hidden_dim) if input_dim != hidden_dim else nn.Identity()
        self.output_proj = nn.Linear(hidden_dim, output_dim) if hidden_dim != output_dim else nn.Identity()

    def forward(self, x, c=None):
        x = self.input_proj(x)
        c = self.cond_proj(c) if c is not None else None
        for block in self.layers:
            x = block(x, c)
        return self.output_proj(self.norm(x))


class Embedder(nn.Module):
    def __init__(self, input_dim=10, smoothed_dim=10, emb_dim=10, mlp_scale=4):
        super().__init__()
        self.input_dim, self.smoothed_dim, self.emb_dim, self.mlp_scale = input_dim, smoothed_dim, emb_dim, mlp_scale
        self.patch_embed = nn.Conv1d(input_dim, smoothed_dim, kernel_size=1, stride=1)
        self.embed = nn.Sequential(nn.Linear(smoothed_dim, mlp_scale * emb_dim), nn.SiLU(),
                                   nn.Linear(mlp_scale * emb_dim, emb_dim))

    def forward(self, x):
        return self.embed(self.patch_embed(x.float().transpose(1, 2)).transpose(1, 2))


class MLP(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim=None, norm_fn=nn.LayerNorm, act_fn=nn.GELU):
        super().__init__()
        self.input_dim, self.hidden_dim, self.output_dim = input_dim, hidden_dim, output_dim or input_dim
        self.net = nn.Sequential(nn.Linear(input_dim, hidden_dim), norm_fn(hidden_dim) if norm_fn else nn.Identity(),
                                 act_fn(), nn.Linear(hidden_dim, output_dim or input_dim))

    def forward(self, x):
        return self.net(x)


class Predictor(nn.Module):
    def __init__(self, *, num_frames, depth, heads, mlp_dim, input_dim, hidden_dim, output_dim=None, dim_head=64,
                 dropout=0.0, emb_dropout=0.0):
        super().__init__()
        self.num_frames, self.input_dim, self.hidden_dim = num_frames, input_dim, hidden_dim
        self.output_dim, self.depth, self.heads, self.dim_head = output_dim or input_dim, depth, heads, dim_head
        self.mlp_dim, self.emb_dropout = mlp_dim, emb_dropout
        self.pos_embedding = nn.Parameter(torch.randn(1, num_frames, input_dim))
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(input_dim, hidden_dim, output_dim or input_dim, depth, heads, dim_head, mlp_dim,
                                       dropout, block_class=ConditionalBlock)

    def forward(self, x, c):
        return self.transformer(self.dropout(x + self.pos_embedding[:, : x.size(1)]), c)


class LeWM(nn.Module):
    """stable-worldmodel's LeWM interface: ``encode(info) -> info`` with ``emb`` (and ``act_emb``), ``predict``."""

    def __init__(self, encoder, predictor, action_encoder, projector=None, pred_proj=None):
        super().__init__()
        self.encoder, self.predictor, self.action_encoder = encoder, predictor, action_encoder
        self.projector = projector or nn.Identity()
        self.pred_proj = pred_proj or nn.Identity()

    def encode(self, info):
        pixels = info["pixels"].float()
        b = pixels.size(0)
        cls = self.encoder(pixels.flatten(0, 1), interpolate_pos_encoding=True).last_hidden_state[:, 0]
        emb = self.projector(cls)
        info["emb"] = emb.view(b, -1, emb.shape[-1])
        if "action" in info:
            info["act_emb"] = self.action_encoder(info["action"])
        return info

    def predict(self, emb, act_emb):
        b, t = emb.shape[:2]
        return self.pred_proj(self.predictor(emb, act_emb).flatten(0, 1)).view(b, t, -1)


def build_standin(encoder: nn.Module, action_dim: int = 10, latent: int = 32, depth: int = 2, heads: int = 4,
                  dim_head: int = 8, mlp_dim: int = 64, proj_hidden: int = 48, frames: int = 3) -> LeWM:
    """A stand-in LeWM of the test suite's tiny sizes (``io.TINY_CONFIG``) around a given ViT encoder."""
    return LeWM(
        encoder,
        Predictor(num_frames=frames, depth=depth, heads=heads, mlp_dim=mlp_dim, input_dim=latent, hidden_dim=latent,
                  dim_head=dim_head, dropout=0.1),
        Embedder(input_dim=action_dim, smoothed_dim=10, emb_dim=latent, mlp_scale=4),
        MLP(latent, proj_hidden, latent, norm_fn=nn.BatchNorm1d),
        MLP(latent, proj_hidden, latent, norm_fn=nn.BatchNorm1d),
    )
