"""Analysis on top of flows and trained runs: ``compare`` (flow versus Monte Carlo), ``verify``
(the paper's claims as checks), ``phase_scaling`` and ``phase_diagram``, Dask ``sweep``s, and the
benchmarks (``bench``, with their NumPy ``references``)."""
from .comparison import Comparison, compare
from .diagram import PhaseDiagram, phase_diagram
from .scaling import ScalingResult, phase_scaling
from .verification import Report, verify

__all__ = ["Comparison", "PhaseDiagram", "Report", "ScalingResult", "compare", "phase_diagram", "phase_scaling",
           "verify"]
