"""gradflow: exact gradient-flow dynamics of attention in a one-layer softmax transformer
trained by masked reconstruction (Huang, Wen, Chi, Liang 2024, arXiv 2403.02233).

The contract is docs/model.md. The layers, bottom up, each importing only those below it::

    ``model``     the data model, presets, TOML model files
    ``theory``    class reduction, the flow's ``State``, SymPy-generated factors, Numba kernels,
                  population loss / gradient / expected attention, the mean-field Jacobian
    ``flow``      ``solve`` and its ``Solution``, observables along a trajectory, phases
    ``training``  transformers trained on sampled data (``train_transformer``, ``train_torch``, ``TrainRun``)
    ``analysis``  ``compare``, ``verify``, ``phase_scaling``, ``phase_diagram``, sweeps, benchmarks
    ``figures``   drawing; ``cli`` the command line

``io`` (output paths, atomic writes, NetCDF) and ``errors`` sit under all of them.
"""
import sys

from ._version import __version__
from .analysis import (
           AreaTable,
           Comparison,
           ImageFlow,
           Report,
           ScalingResult,
           area_table,
           compare,
           image_flow,
           learned_last,
           phase_diagram,
           phase_scaling,
           sweep,
           verify,
)
from .errors import (
           ConfigError,
           FileFormatError,
           GradflowError,
           InvalidInputError,
           OutputPathError,
)
from .flow import (
           Phases,
           PhaseSummary,
           Solution,
           attention_diversity,
           phases,
           solve,
           summarize,
)
from .model import Amplitude, Cluster, DataModel, images, preset, presets
from .theory import (
           State,
           area_oracle_loss,
           expected_attention,
           population_grad,
           population_loss,
)
from .training import TrainRun, train_torch, train_transformer

# ``gradflow.presets`` is the documented namespace of ready-made models: make
# ``from gradflow.presets import global_local`` work as well as attribute access
sys.modules.setdefault(f"{__name__}.presets", presets)
# ``gradflow.images``: models from photographs (segment, data_model, sample_images), importable alike
sys.modules.setdefault(f"{__name__}.images", images)

__all__ = ["Amplitude", "AreaTable", "Cluster", "Comparison", "ConfigError", "DataModel", "FileFormatError",
           "GradflowError", "ImageFlow", "InvalidInputError", "OutputPathError", "PhaseSummary", "Phases", "Report",
           "ScalingResult", "Solution", "State", "TrainRun", "__version__", "area_oracle_loss", "area_table",
           "attention_diversity", "compare", "expected_attention", "image_flow", "images", "learned_last",
           "phase_diagram", "phase_scaling", "phases", "population_grad", "population_loss", "preset", "presets", "solve",
           "summarize", "sweep",
           "train_torch", "train_transformer", "verify"]
