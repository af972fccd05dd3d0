"""CEM planning on LeWM: the fused rollout engine, ``accelerate`` and the planners built on them."""

from .accelerate import AcceleratedLeWM, accelerate
from .rollout import RolloutEngine
from .base import PlannerBase, warm_start
from .cem import CEMPlanner
from .icem import ICEMPlanner, colored_noise_basis
from .mppi import MPPIPlanner
from .idm import IDMInit, IDMPolicy, idm_rollout
from .gradient import GradientPlanner
from .lagrangian import LagrangianPlanner, box_constraints
from .predictive_sampling import PredictiveSamplingPlanner
from .discrete import ActionGrid
from .pgd import PGDPlanner
from .categorical_cem import CategoricalCEMPlanner
