"""See inside a LeWM: linear / MLP probes of the frozen latents, surprise on perturbed trajectories, 2-D latent maps,
and a planning viewer (``PlanRecorder`` + ``write_viewer``). Each analysis returns plain data (dicts of numbers and
numpy arrays); the ``plot_*`` functions draw them; ``lewm-analyze`` is the command line."""

from .latent_map import latent_map
from .plots import plot_latent_map, plot_probe, plot_surprise
from .probes import probe, probe_latents
from .projection import LatentProjection
from .quantities import QUANTITIES, read_quantities
from .surprise import auroc, detection, surprise, surprise_trace
from .viewer import PlanRecorder, write_viewer

__all__ = [
    "LatentProjection", "PlanRecorder", "QUANTITIES", "auroc", "detection", "latent_map", "plot_latent_map",
    "plot_probe", "plot_surprise", "probe", "probe_latents", "read_quantities", "surprise", "surprise_trace",
    "write_viewer",
]
