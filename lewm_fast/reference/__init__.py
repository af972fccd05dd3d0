"""Plain-PyTorch reference of the whole LeWM system: the oracle every fast path is tested against."""

from .cem import CEMSolver, EliteRefit, PlanDiagnostics, elite_refit_reference, goal_mse_cost, sample_candidates
from .lewm import LeWM
from .loss import LossTerms, lewm_loss
from .modules import MLP, Attention, ConditionalBlock, Embedder, FeedForward, Predictor, Transformer, modulate
from .sigreg import SIGReg, random_projection, sigreg_knots, sigreg_reference
from .vit import VIT_SIZES, ViTConfig, ViTEncoder, convert_vit_keys, preprocess_frames, vit_hf

__all__ = [
    "Attention", "CEMSolver", "ConditionalBlock", "EliteRefit", "Embedder", "FeedForward", "LeWM", "LossTerms", "MLP",
    "PlanDiagnostics", "Predictor", "SIGReg", "Transformer", "VIT_SIZES", "ViTConfig", "ViTEncoder", "convert_vit_keys",
    "elite_refit_reference", "goal_mse_cost", "lewm_loss", "modulate", "preprocess_frames", "random_projection",
    "sample_candidates", "sigreg_knots", "sigreg_reference", "vit_hf",
]
