"""gradflow: exact gradient-flow dynamics of attention in a one-layer softmax transformer
trained by masked reconstruction (Huang, Wen, Chi, Liang 2024, arXiv 2403.02233).

The mathematical contract is MODEL.md; the layers, bottom up: ``model`` (data model),
``reduction`` (signature classes), ``_generated`` (SymPy expressions), ``kernels`` (Numba),
``population`` (loss, gradient, attention), ``solver`` (``solve``), ``presets``, ``cli``.
"""
from .model import Amplitude, Cluster, DataModel
from .population import expected_attention, population_grad, population_loss
from .solver import Solution, State, solve
from . import presets

__all__ = ["Amplitude", "Cluster", "DataModel", "Solution", "State", "expected_attention",
           "population_grad", "population_loss", "presets", "solve"]
__version__ = "0.1.0"
