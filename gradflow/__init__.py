"""gradflow: exact gradient-flow dynamics of attention in a one-layer softmax transformer
trained by masked reconstruction (Huang, Wen, Chi, Liang 2024, arXiv 2403.02233).

The mathematical contract is MODEL.md; the layers, bottom up: ``model`` (data model),
``reduction`` (signature classes), ``_generated`` (SymPy expressions), ``kernels`` (Numba),
``population`` (loss, gradient, attention), ``solver`` (``solve``), ``montecarlo`` (SGD-trained
transformers), ``compare`` (flow versus Monte Carlo), ``presets``, ``cli``.
"""
from .model import Amplitude, Cluster, DataModel
from .population import expected_attention, population_grad, population_loss
from .solver import Solution, State, solve
from .montecarlo import TrainRun, train_transformer
from .compare import Comparison, compare
from . import presets

__all__ = ["Amplitude", "Cluster", "Comparison", "DataModel", "Solution", "State", "TrainRun",
           "compare", "expected_attention", "population_grad", "population_loss", "presets", "solve",
           "train_transformer"]
__version__ = "0.1.0"
