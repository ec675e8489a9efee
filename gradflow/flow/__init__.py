"""The gradient flow: ``solve`` and its ``Solution``, observables along a trajectory, phases."""
from .observables import area_masses, attention_diversity, target_fraction
from .phase_times import Phases, PhaseSummary, phases, summarize
from .solution import Solution
from .solver import solve

__all__ = ["PhaseSummary", "Phases", "Solution", "area_masses", "attention_diversity", "phases", "solve",
           "summarize", "target_fraction"]
