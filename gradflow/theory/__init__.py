"""The exact theory: class reduction, the flow's state, SymPy-generated key factors, Numba
kernels, and the population loss, gradient, expected attention and Jacobian built on them."""
from .oracle import area_oracle_loss
from .per_position import expected_attention, population_grad, population_loss, target_attention_at
from .population import (
                         ClassAttention,
                         attention_by_class,
                         attention_maps,
                         check_method,
                         loss,
                         loss_and_gradient,
                         own_area_attention,
)
from .reduction import Reduction, position_reduction, signature_reduction
from .state import State

__all__ = ["ClassAttention", "Reduction", "State", "area_oracle_loss", "attention_by_class", "attention_maps",
           "check_method", "expected_attention", "loss", "loss_and_gradient", "own_area_attention",
           "population_grad", "population_loss", "position_reduction", "signature_reduction", "target_attention_at"]
