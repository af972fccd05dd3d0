"""The LeWM world model: ViT encoder + BN-MLP projector, action Embedder, AdaLN-zero Predictor + pred_proj."""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .._validation import check_tensor
from .modules import Embedder, MLP, Predictor
from .vit import ViTEncoder


class LeWM(nn.Module):
    """JEPA world model with stable-worldmodel's module names (``encoder``, ``predictor``, ``action_encoder``,
    ``projector``, ``pred_proj``) so its state dict loads stable-worldmodel checkpoints key for key."""

    def __init__(
        self,
        encoder: ViTEncoder,
        predictor: Predictor,
        action_encoder: Embedder,
        projector: Optional[nn.Module] = None,
        pred_proj: Optional[nn.Module] = None,
    ):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.action_encoder = action_encoder
        self.projector = projector if projector is not None else nn.Identity()
        self.pred_proj = pred_proj if pred_proj is not None else nn.Identity()
        self.config: Optional[Dict[str, Any]] = None  # set by from_config / from_pretrained

    # ------------------------------------------------------------------ sizes
    # (read off the weights, so stable-worldmodel's own submodules work here too)
    @property
    def latent_dim(self) -> int:
        return self.predictor.pos_embedding.shape[-1]

    @property
    def action_dim(self) -> int:
        """Width of one action block fed to the model (frameskip x env action dim)."""
        return self.action_encoder.patch_embed.in_channels

    @property
    def history_size(self) -> int:
        """Frames in the predictor's window (``num_frames``)."""
        return self.predictor.pos_embedding.shape[1]

    # ------------------------------------------------------------------ encoding
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, h, w) ImageNet-normalised floats -> latents (B, T, D)."""
        check_tensor(pixels, "pixels", ndim=5, finite=True)
        if pixels.shape[2] != 3:
            raise ValueError(f"pixels must have 3 channels at dim 2 (B, T, 3, h, w), got shape {tuple(pixels.shape)}")
        b, t = pixels.shape[:2]
        cls = self.encoder(pixels.flatten(0, 1), interpolate_pos_encoding=True).last_hidden_state[:, 0]
        return self.projector(cls).view(b, t, -1)

    def embed_actions(self, action: torch.Tensor) -> torch.Tensor:
        """(B, T, action_dim) -> action embeddings (B, T, D)."""
        check_tensor(action, "action", ndim=3, last_dim=self.action_dim, finite=True)
        return self.action_encoder(action)

    def encode(
        self, pixels: Union[torch.Tensor, Dict[str, torch.Tensor]], action: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]]:
        """``encode(pixels (B,T,3,h,w)) -> emb (B,T,D)``; with ``action`` (B,T,action_dim) also returns act_emb.

        For drop-in use with stable-worldmodel code, a dict ``{"pixels": ..., "action": ...}`` is also accepted and
        returned with ``"emb"`` (and ``"act_emb"``) filled in.
        """
        if isinstance(pixels, dict):
            info = pixels
            if "pixels" not in info:
                raise ValueError("info dict passed to encode() must hold a 'pixels' entry")
            info["emb"] = self.encode_pixels(info["pixels"].float() if info["pixels"].dtype == torch.uint8 else info["pixels"])
            if "action" in info:
                info["act_emb"] = self.embed_actions(info["action"])
            return info
        emb = self.encode_pixels(pixels)
        if action is None:
            return emb
        if action.shape[:2] != pixels.shape[:2]:
            raise ValueError(
                f"action (B,T,A) must match pixels' (B,T)={tuple(pixels.shape[:2])}, got {tuple(action.shape)}"
            )
        return emb, self.embed_actions(action)

    # ------------------------------------------------------------------ prediction
    def predict(self, emb: torch.Tensor, act_emb: torch.Tensor) -> torch.Tensor:
        """Next-latent prediction at every position: (B,T,D), (B,T,D) -> (B,T,D), T <= history_size."""
        check_tensor(emb, "emb", ndim=3, last_dim=self.latent_dim)
        check_tensor(act_emb, "act_emb", ndim=3, last_dim=self.latent_dim)
        if emb.shape[:2] != act_emb.shape[:2]:
            raise ValueError(f"emb and act_emb must share (B,T), got {tuple(emb.shape)} and {tuple(act_emb.shape)}")
        return self._predict(emb, act_emb)

    def _predict(self, emb: torch.Tensor, act_emb: torch.Tensor) -> torch.Tensor:
        b, t, _ = emb.shape
        out = self.predictor(emb, act_emb)
        return self.pred_proj(out.reshape(b * t, -1)).view(b, t, -1)

    def rollout(
        self, emb_ctx: torch.Tensor, action_history: torch.Tensor, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Autoregressive latent rollout of candidate action sequences.

        emb_ctx (B,S,H,D) context latents; action_history (B,S,H-1,A) actions taken between them;
        candidates (B,S,T,A) -> latents (B,S,H+T,D) whose first H entries are the context.
        Action i is paired with latent i: context frames get ``cat(action_history, candidates[:,:,:1])``;
        step t feeds the last ``history_size`` latents with their actions and appends the last prediction.
        """
        check_tensor(emb_ctx, "emb_ctx", ndim=4, last_dim=self.latent_dim)
        check_tensor(candidates, "candidates", ndim=4, last_dim=self.action_dim, finite=True)
        check_tensor(action_history, "action_history", ndim=4, last_dim=self.action_dim, finite=True, nonempty=False)
        b, s, h, _ = emb_ctx.shape
        if candidates.shape[:2] != (b, s) or action_history.shape[:2] != (b, s):
            raise ValueError(
                f"emb_ctx, action_history and candidates must share (B,S)={(b, s)}, got "
                f"{tuple(action_history.shape)} and {tuple(candidates.shape)}"
            )
        if action_history.shape[2] != h - 1:
            raise ValueError(f"action_history must hold H-1={h - 1} actions for H={h} context latents, got {action_history.shape[2]}")
        actions = torch.cat([action_history, candidates], dim=2).flatten(0, 1)
        act_emb = self.action_encoder(actions)  # (B*S, H-1+T, D)
        emb = emb_ctx.flatten(0, 1)
        w = self.history_size
        for _ in range(candidates.shape[2]):
            n = emb.shape[1]
            window = self._predict(emb[:, -w:], act_emb[:, max(n - w, 0):n])
            emb = torch.cat([emb, window[:, -1:]], dim=1)
        return emb.view(b, s, emb.shape[1], -1)

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "LeWM":
        """Build from a stable-worldmodel-style config dict (``_target_`` entries)."""
        from ..io import build_model

        return build_model(config)

    @classmethod
    def from_pretrained(cls, path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu", allow_pickle: bool = False) -> "LeWM":
        """Load a stable-worldmodel checkpoint folder (``config.json`` + ``weights.pt``), strictly, or an object checkpoint
        file (``<run>_object.ckpt``, a pickled stable-worldmodel / le-wm LeWM) without running code from it."""
        from ..io import load_pretrained

        return load_pretrained(path, map_location=map_location, allow_pickle=allow_pickle)

    def save_pretrained(self, path: Union[str, os.PathLike], encoder_layout: str = "5.x") -> None:
        """Write ``config.json`` + ``weights.pt`` (encoder keys in the transformers ``encoder_layout`` naming)."""
        from ..io import save_pretrained

        save_pretrained(self, path, encoder_layout=encoder_layout)
