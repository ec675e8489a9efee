"""Transformers trained on sampled data: the Monte-Carlo SGD trainer (Numba), the PyTorch ladder
of realistic transformers, and their records.

``sampling`` draws minibatches, ``transformer`` is the forward and backward pass, ``sgd`` the
training loop, ``checkpoint`` its resumable state, ``run`` the ``TrainRun`` record.
``pytorch`` holds :func:`train_torch`; it is the only module that imports torch, and it is
imported only when ``train_torch`` is called (the optional extra ``gradflow[torch]``).
"""
from .run import TrainRun
from .sgd import train_transformer


def train_torch(model, **options) -> TrainRun:
    """Train a PyTorch transformer on the model's data; see :func:`gradflow.training.pytorch.train_torch`.

    ``train_torch(model, *, steps, lr, batch_size=256, seed=0, attention="merged"|"factorized",
    value="identity"|"learned", heads=1, layernorm=False, depth=1, embedding="orthonormal"|
    "gaussian", dim=None, optimizer="sgd"|"adam", init_scale=None, record_every=100,
    record_steps=None, eval_size=2048, dtype="float64", device=None, progress=None)``.
    With the defaults it is the transformer of docs/model.md section 2 (the bottom rung of
    ``gradflow ladder``); each option departs from it in one respect. Returns a ``TrainRun``.
    Needs PyTorch (``pip install 'gradflow[torch]'``); torch is imported on the first call.
    """
    try:
        from .pytorch import train_torch as _train_torch
    except ModuleNotFoundError as exc:
        if exc.name != "torch":
            raise
        raise ModuleNotFoundError("gradflow.train_torch needs PyTorch: pip install 'gradflow[torch]' "
                                  "(a CPU build is enough)", name="torch") from None
    return _train_torch(model, **options)


__all__ = ["TrainRun", "train_torch", "train_transformer"]
