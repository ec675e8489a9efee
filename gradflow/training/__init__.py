"""Transformers trained on sampled data: the Monte-Carlo SGD trainer (Numba), the PyTorch ladder
of realistic transformers, and their records.

``sampling`` draws minibatches, ``transformer`` is the forward and backward pass, ``sgd`` the
training loop, ``checkpoint`` its resumable state, ``run`` the ``TrainRun`` record.
``pytorch`` holds :func:`train_torch` and the MAE on pixel patches; it is the only module that
imports torch, and it is imported only when a PyTorch trainer is called (the optional extra
``gradflow[torch]``). ``mae`` prepares the MAE's images and patches (no torch) and holds
:func:`train_mae`.
"""
from .mae import MAEData, mae_data, train_mae
from .run import TrainRun
from .sgd import train_transformer


def train_torch(model, *, steps: int, lr: float, batch_size: int = 256, seed: int = 0, attention: str = "merged",
                value: str = "identity", heads: int = 1, layernorm: bool = False, depth: int = 1,
                embedding: str = "orthonormal", dim: int | None = None, optimizer: str = "sgd",
                init_scale: float | None = None, record_every: int = 100, record_steps=None, eval_size: int = 2048,
                dtype: str = "float64", device=None, progress=None) -> TrainRun:
    """Train a PyTorch transformer on the model's data; the parameters are those of
    ``gradflow.training.pytorch.train_torch``.

    With the defaults it is the transformer of docs/model.md section 2 (the bottom rung of
    ``gradflow ladder``); each option departs from it in one respect. Returns a ``TrainRun``.
    Needs PyTorch (``pip install 'gradflow[torch]'``); torch is imported on the first call.
    """
    options = dict(locals())               # exactly the parameters above, passed on unchanged
    try:
        from .pytorch import train_torch as _train_torch
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise ModuleNotFoundError("gradflow.train_torch needs PyTorch: pip install 'gradflow[torch]' "
                                  "(a CPU build is enough)", name="torch") from None
    return _train_torch(**options)


__all__ = ["MAEData", "TrainRun", "mae_data", "train_mae", "train_torch", "train_transformer"]
