"""The data model (docs/model.md section 1): patches, clusters, areas, amplitudes, masking;
ready-made presets, TOML model files, and models from photographs (``images``)."""
from . import images, presets
from .amplitude import Amplitude
from .config import load_model, model_from_dict
from .datamodel import Cluster, DataModel
from .presets import PRESETS, preset

__all__ = ["Amplitude", "Cluster", "DataModel", "PRESETS", "load_model", "images", "model_from_dict", "preset",
           "presets"]
