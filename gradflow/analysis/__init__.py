"""Analysis on top of flows and trained runs: ``compare`` (flow versus Monte Carlo), ``verify``
(the paper's claims as checks), ``phase_scaling`` and ``phase_diagram``, flows of photographs
(``image_flow``) and their per-area tables (``area_table``, ``learned_last``), Dask ``sweep``s, and
the benchmarks (``bench``, with their NumPy ``references``)."""
from .areas import (
           AreaTable,
           LearnedLast,
           SegmentationQuality,
           area_table,
           learned_last,
           segmentation_quality,
)
from .comparison import Comparison, compare
from .diagram import PhaseDiagram, phase_diagram
from .image_flows import ImageFlow, image_flow
from .scaling import ScalingResult, phase_scaling
from .sweeps import sweep
from .verification import Report, verify

__all__ = ["AreaTable", "Comparison", "ImageFlow", "LearnedLast", "PhaseDiagram", "Report", "ScalingResult", "SegmentationQuality",
           "area_table", "compare", "image_flow", "learned_last", "phase_diagram", "phase_scaling",
           "segmentation_quality", "sweep", "verify"]
