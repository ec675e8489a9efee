"""gradflow: exact gradient-flow dynamics of attention in a one-layer softmax transformer
trained by masked reconstruction (Huang, Wen, Chi, Liang 2024, arXiv 2403.02233).

The mathematical contract is MODEL.md; the layers, bottom up: ``model`` (data model),
``reduction`` (signature classes), ``_generated`` (SymPy expressions), ``kernels`` (Numba),
``population`` (loss, gradient, attention), ``solver`` (``solve``), ``montecarlo`` (SGD-trained
transformers), ``compare`` (flow versus Monte Carlo), ``observables`` (phases, diversity),
``verify`` (the paper's claims as checks), ``scaling`` (phase times versus P), ``presets``, ``cli``.
"""
from .model import Amplitude, Cluster, DataModel
from .population import expected_attention, population_grad, population_loss
from .solver import Solution, State, solve
from .montecarlo import TrainRun, train_transformer
from .compare import Comparison, compare
from .observables import Phases, area_oracle_loss, attention_diversity, phases
from .verify import Report, verify
from .scaling import ScalingResult, phase_scaling
from . import presets

__all__ = ["Amplitude", "Cluster", "Comparison", "DataModel", "Phases", "Report", "ScalingResult",
           "Solution", "State", "TrainRun", "area_oracle_loss", "attention_diversity", "compare",
           "expected_attention", "phase_scaling", "phases", "population_grad", "population_loss",
           "presets", "solve", "train_transformer", "verify"]
__version__ = "0.1.0"
