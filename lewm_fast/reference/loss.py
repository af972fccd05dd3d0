"""The LeWM training objective: next-latent MSE + sigreg_weight * SIGReg(latents)."""

from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
from torch import nn

from .._validation import check_tensor
from .lewm import LeWM


class LossTerms(NamedTuple):
    loss: torch.Tensor
    pred_loss: torch.Tensor
    sigreg_loss: torch.Tensor


def encode_and_predict(model: LeWM, pixels: torch.Tensor, actions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """pixels (B,T,3,h,w), actions (B,T,action_dim) -> latents (B,T,D) and predictions (B,T-1,D) of latents 2..T.

    NaN actions (sequence boundaries) are replaced by 0. Prediction uses the first T-1 frames, targets the last T-1.
    """
    check_tensor(actions, "actions", ndim=3, last_dim=model.action_dim)
    if pixels.shape[:2] != actions.shape[:2]:
        raise ValueError(f"pixels and actions must share (B,T), got {tuple(pixels.shape)} and {tuple(actions.shape)}")
    t = pixels.shape[1]
    if not 2 <= t <= model.history_size + 1:
        raise ValueError(f"training sequences need 2..{model.history_size + 1} frames, got {t}")
    emb, act_emb = model.encode(pixels, actions.masked_fill(torch.isnan(actions), 0.0))
    return emb, model.predict(emb[:, :-1], act_emb[:, :-1])


def prediction_loss(model: LeWM, pixels: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The next-latent MSE alone (e.g. on held-out sequences): ``lewm_loss(...).pred_loss`` without SIGReg."""
    emb, pred = encode_and_predict(model, pixels, actions)
    return (pred - emb[:, 1:]).square().mean()


def lewm_loss(
    model: LeWM, pixels: torch.Tensor, actions: torch.Tensor, sigreg: nn.Module, sigreg_weight: float = 0.09
) -> LossTerms:
    """pixels (B,T,3,h,w), actions (B,T,action_dim) with T = history_size + 1 -> LossTerms of scalars (see
    ``encode_and_predict``)."""
    emb, pred = encode_and_predict(model, pixels, actions)
    pred_loss = (pred - emb[:, 1:]).square().mean()
    sigreg_loss = sigreg(emb.transpose(0, 1))
    return LossTerms(pred_loss + sigreg_weight * sigreg_loss, pred_loss, sigreg_loss)
