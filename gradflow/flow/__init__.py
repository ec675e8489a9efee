"""The gradient flow: ``solve`` and its ``Solution``, observables along a trajectory, phases."""
from .observables import AreaMasses, area_masses, attention_diversity, target_fraction
from .phase_times import Phases, PhaseSummary, phases, summarize
from .solution import PerPosition, Solution
from .solver import solve

__all__ = ["AreaMasses", "PerPosition", "PhaseSummary", "Phases", "Solution", "area_masses", "attention_diversity", "phases", "solve",
           "summarize", "target_fraction"]
