"""Transformers trained on sampled data: the Monte-Carlo SGD trainer (Numba) and its records.

``sampling`` draws minibatches, ``transformer`` is the forward and backward pass, ``sgd`` the
training loop, ``checkpoint`` its resumable state, ``run`` the ``TrainRun`` record.
"""
from .run import TrainRun
from .sgd import train_transformer

__all__ = ["TrainRun", "train_transformer"]
