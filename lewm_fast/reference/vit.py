"""ViT encoder with the HuggingFace ``ViTModel`` parameter layout (transformers 5.x names; 4.x names load too).

Implemented here so that ``transformers`` is not needed at run time. Pre-norm blocks, exact-erf GELU, qkv with bias,
no pooler, no mask token. Output: ``last_hidden_state`` (N, 1 + num_patches, hidden).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

# size -> (hidden, layers, heads, mlp)
VIT_SIZES: Dict[str, tuple[int, int, int, int]] = {
    "tiny": (192, 12, 3, 768),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge": (1280, 32, 16, 5120),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ViTConfig:
    hidden_size: int = 192
    num_hidden_layers: int = 12
    num_attention_heads: int = 3
    intermediate_size: int = 768
    patch_size: int = 14
    image_size: int = 224
    num_channels: int = 3
    layer_norm_eps: float = 1e-12
    dropout: float = 0.0

    @classmethod
    def from_size(cls, size: str = "tiny", patch_size: int = 14, image_size: int = 224, **overrides) -> "ViTConfig":
        if size not in VIT_SIZES:
            raise ValueError(f"unknown ViT size {size!r}; expected one of {sorted(VIT_SIZES)}")
        hidden, layers, heads, mlp = VIT_SIZES[size]
        fields = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp)
        fields.update(overrides)
        return cls(patch_size=patch_size, image_size=image_size, **fields)


class PatchEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.projection = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, (H/p)(W/p), hidden)."""
        return self.projection(pixels).flatten(2).transpose(1, 2)


class ViTEmbeddings(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        num_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.hidden_size) * 0.02)
        self.position_embeddings = nn.Parameter(torch.randn(1, num_patches + 1, cfg.hidden_size) * 0.02)
        self.patch_embeddings = PatchEmbeddings(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.patch_size = cfg.patch_size

    def interpolate_pos_encoding(self, num_patches: int, height: int, width: int) -> torch.Tensor:
        """Bicubic resize of the patch position grid to (height/p, width/p), as HuggingFace ViT does."""
        num_positions = self.position_embeddings.shape[1] - 1
        if num_patches == num_positions and height == width:
            return self.position_embeddings
        dim = self.position_embeddings.shape[-1]
        side = int(math.sqrt(num_positions))
        grid = self.position_embeddings[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, size=(height // self.patch_size, width // self.patch_size), mode="bicubic", align_corners=False
        )
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([self.position_embeddings[:, :1], grid], dim=1)

    def forward(self, pixels: torch.Tensor, interpolate_pos_encoding: bool = True) -> torch.Tensor:
        """(N, C, H, W) -> (N, 1 + P, hidden)."""
        n, _, height, width = pixels.shape
        patches = self.patch_embeddings(pixels.to(self.patch_embeddings.projection.weight.dtype))
        tokens = torch.cat([self.cls_token.expand(n, -1, -1), patches], dim=1)
        if interpolate_pos_encoding:
            tokens = tokens + self.interpolate_pos_encoding(patches.shape[1], height, width)
        else:
            if patches.shape[1] != self.position_embeddings.shape[1] - 1:
                raise ValueError(
                    f"input {height}x{width} gives {patches.shape[1]} patches but the model has "
                    f"{self.position_embeddings.shape[1] - 1} positions; pass interpolate_pos_encoding=True"
                )
            tokens = tokens + self.position_embeddings
        return self.dropout(tokens)


class ViTAttention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.o_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, hidden) -> (N, L, hidden), bidirectional softmax attention."""
        n, length, hidden = x.shape
        q, k, v = (p(x).view(n, length, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(n, length, hidden))


class ViTMLP(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


class ViTLayer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attention = ViTAttention(cfg)
        self.layernorm_after = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = ViTMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.mlp(self.layernorm_after(x))


class ViTOutput:
    """Mimics the HuggingFace output object: ``.last_hidden_state`` (N, 1 + P, hidden)."""

    __slots__ = ("last_hidden_state",)

    def __init__(self, last_hidden_state: torch.Tensor):
        self.last_hidden_state = last_hidden_state

    def __getitem__(self, index: int) -> torch.Tensor:
        if index != 0:
            raise IndexError("ViTOutput holds only last_hidden_state")
        return self.last_hidden_state


# transformers 4.x ViT key names -> 5.x names (relative to the encoder)
_KEYS_4X_TO_5X = [
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"layers.\1.attention.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"layers.\1.attention.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"layers.\1.attention.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attention.o_proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.mlp.fc2."),
    (r"^encoder\.layer\.(\d+)\.layernorm_(before|after)\.", r"layers.\1.layernorm_\2."),
]
_KEYS_5X_TO_4X = [
    (r"^layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
    (r"^layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
    (r"^layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
    (r"^layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
    (r"^layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
    (r"^layers\.(\d+)\.layernorm_(before|after)\.", r"encoder.layer.\1.layernorm_\2."),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def convert_vit_keys(state_dict: Dict[str, torch.Tensor], layout: str, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Rename the encoder keys (those starting with ``prefix``) of a state dict to ``layout`` ("4.x" or "5.x")."""
    if layout not in ("4.x", "5.x"):
        raise ValueError(f"layout must be '4.x' or '5.x', got {layout!r}")
    rules = _KEYS_5X_TO_4X if layout == "4.x" else _KEYS_4X_TO_5X
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            key = prefix + _rename(key[len(prefix):], rules)
        out[key] = value
    return out


def detect_vit_layout(keys, prefix: str = "") -> str:
    """'4.x' if any key under ``prefix`` uses the transformers 4.x names, else '5.x'."""
    return "4.x" if any(k.startswith(prefix + "encoder.layer.") for k in keys) else "5.x"


class ViTEncoder(nn.Module):
    """HuggingFace-layout ViT. ``forward(pixels (N,3,H,W), interpolate_pos_encoding=True) -> ViTOutput``."""

    def __init__(self, cfg: ViTConfig = ViTConfig()):
        super().__init__()
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by {cfg.num_attention_heads} heads")
        self.config = cfg
        self.embeddings = ViTEmbeddings(cfg)
        self.layers = nn.ModuleList(ViTLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self._register_load_state_dict_pre_hook(self._accept_4x_keys)

    @staticmethod
    def _accept_4x_keys(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Let checkpoints written with transformers 4.x names load into this (5.x-named) module."""
        old = [k for k in state_dict if k.startswith(prefix + "encoder.layer.")]
        for key in old:
            state_dict[prefix + _rename(key[len(prefix):], _KEYS_4X_TO_5X)] = state_dict.pop(key)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    def forward(self, pixels: torch.Tensor, interpolate_pos_encoding: bool = True) -> ViTOutput:
        x = self.embeddings(pixels, interpolate_pos_encoding=interpolate_pos_encoding)
        for layer in self.layers:
            x = layer(x)
        return ViTOutput(self.layernorm(x))


def vit_hf(
    size: str = "tiny",
    patch_size: int = 14,
    image_size: int = 224,
    pretrained: bool = False,
    use_mask_token: bool = False,
    **overrides,
) -> ViTEncoder:
    """Drop-in for ``stable_pretraining.backbone.utils.vit_hf`` (random init; ``pretrained`` weights come from a checkpoint)."""
    if pretrained:
        raise ValueError("pretrained=True would download weights from a model hub; load a lewm checkpoint folder instead")
    if use_mask_token:
        raise ValueError("use_mask_token=True is not supported: LeWM's encoder has no mask token")
    return ViTEncoder(ViTConfig.from_size(size, patch_size=patch_size, image_size=image_size, **overrides))


def preprocess_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) -> ImageNet-normalised float32 (..., 3, H, W)."""
    if not isinstance(frames, torch.Tensor):
        frames = torch.as_tensor(frames)
    if frames.dim() < 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (..., H, W, 3), got {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 RGB, got {frames.dtype}")
    x = frames.movedim(-1, -3).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(3, 1, 1)
    return (x - mean) / std
