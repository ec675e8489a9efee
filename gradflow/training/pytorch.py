"""Transformers in PyTorch on the data of docs/model.md: the model itself and realistic variants.

:func:`train_torch` samples minibatches exactly as the Numba Monte Carlo does
(``BatchSampler`` fed by ``np.random.default_rng(seed)``, the embeddings drawn first from the same
generator by ``make_embeddings``), trains with batched tensor operations (a GPU when present) and
returns a :class:`~gradflow.training.run.TrainRun`, so ``compare``, ``phases``, saving and the
figures read it like any other run. This is the only module of gradflow that imports torch, and
it is imported only when ``train_torch`` is first called (``pip install 'gradflow[torch]'``).

The architecture (every option is one departure from docs/model.md section 2)
-------------------------------------------------------------------------------
* **Tokens.** h_q = e_q + 1{q unmasked} x_q in R^d, x_q = z_q v_{f(q)}; E (d x P) and V (d x F)
  are the data's embeddings: ``embedding="orthonormal"`` (the model's) or ``"gaussian"``
  (i.i.d. N(0, 1/d) entries, only nearly orthogonal). ``dim`` = d, default and minimum F + P.
* **Scores.** Head h of a layer scores key q for query p as s_pq = u_p^T Q_h u_q, where u = h,
  or u = LayerNorm(h) with ``layernorm=True`` (learned gain and bias, init 1 and 0, eps 1e-5;
  applied to queries and keys alike). ``attention="merged"``: Q_h is one d x d matrix (the
  model's); ``"factorized"``: Q_h = W_Q^T W_K with W_Q, W_K in R^{d_k x d}, d_k = ceil(d / heads).
  Every patch is a key, the query itself and the other masked patches included; w = softmax_q s.
* **Values.** ``value="identity"`` (the model's): the key's content, i.e. its residual stream
  less its position, h_q - e_q (in the first layer its visible content 1{q unmasked} x_q).
  ``"learned"``: W_V u_q with a learned W_V in R^{d x d} per head.
* **Heads.** A layer's output at p is the mean over its ``heads`` heads of sum_q w^h_pq value_h(q)
  (the mean keeps an identity-value prediction a convex mixture of contents).
* **Depth.** With ``depth`` = L, layers 1 .. L-1 update every token, h_q <- h_q + output_q
  (a residual stream); the output of layer L at a masked patch p is the prediction yhat_p.
* **Loss** (docs/model.md section 2, for every rung): the mean over the batch's samples of
  1/2 sum over masked p of ||yhat_p - x_p||^2, the reconstruction of the patch content x_p in
  R^d. ``optimizer="sgd"``: plain SGD (no momentum, no weight decay), as the flow's
  discretisation; ``"adam"``: torch's Adam with its default betas (0.9, 0.999) and eps 1e-8.
* **Initial values.** Merged Q_h: i.i.d. N(0, init_scale^2) entries; the default ``init_scale``
  is 0 (Q(0) = 0, the flow's start) for one head, and 1/sqrt(d) for several heads, which would
  otherwise stay equal forever. W_Q, W_K: N(0, init_scale^2), default 1/sqrt(d) (the usual
  fan-in scale; W_Q = W_K = 0 is a saddle with zero gradient, so 0 is refused). W_V:
  N(0, 1/d) entries.

With the defaults (merged, identity value, one head, one layer, no LayerNorm, orthonormal, SGD)
this *is* the transformer of docs/model.md section 2 and of ``train_transformer``: same
embeddings, same Q(0), same minibatches draw for draw, same loss; only the floating-point
order of operations differs.

Random numbers. The data generator ``default_rng(seed)`` draws E, V, then (for the model's
network, one merged head in one layer, when init_scale > 0) Q(0) as ``train_transformer``
does, then every minibatch. The other parameters come from ``default_rng([seed, 1])`` and the
fixed evaluation batch from ``default_rng([seed, 2])``, so every rung of the ladder sees the same
training data for a given seed.

Observables. At every record, on the fixed evaluation batch, the last layer's attention (mean
over heads) gives the measured ``attention_by_area`` (mass of a masked query at p on the unmasked
keys of each area), ``masked_mass`` and ``eval_loss``. Where the correlations of docs/model.md
section 3 are the network's (one head, one layer, no LayerNorm, identity value, orthonormal
embeddings; merged or factorized Q with Q = W_Q^T W_K), the run also records A = E^T Q V,
B = E^T Q E and the exact expected ``target_attention`` of that state.

Also here: :class:`PatchMAE` and :func:`train_patch_mae`, the MAE on pixel patches of real
images of the ladder's top rung (its data: :mod:`gradflow.training.mae`; the same sampling,
records, optimisers and divergence handling as ``train_torch``), and :func:`seconds_per_step`,
the bare SGD step of the bottom rung that ``gradflow.analysis.ladder.steps_per_second`` times.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import torch

from .._validate import (
    choice,
    instance,
    is_real,
    nonnegative_int,
    positive_int,
    positive_real,
    real,
)
from ..errors import InvalidInputError
from ..model import DataModel
from ..theory.population import target_attention_at
from .run import TrainRun
from .sampling import BatchSampler
from .sgd import _progress_bar, check_width
from .transformer import make_embeddings

ATTENTIONS = ("merged", "factorized")
VALUES = ("identity", "learned")
EMBEDDINGS = ("orthonormal", "gaussian")
OPTIMIZERS = ("sgd", "adam")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
EVAL_CHUNK = 512          # evaluation samples per forward pass (bounds the memory of a record)


def has_correlations(attention: str, value: str, heads: int, layernorm: bool, depth: int, embedding: str) -> bool:
    """True when the network's scores are e_p^T Q h_q with one Q and its prediction is the
    model's, so that A = E^T Q V and B = E^T Q E determine its attention exactly."""
    return heads == 1 and depth == 1 and not layernorm and value == "identity" and embedding == "orthonormal"


class Batch:
    """One minibatch as tensors: c (b, P) visible amplitude 1{unmasked} z, fq (b, P) feature of
    every patch, target (b, P, F) the content x_p in feature coordinates, query (b, P) masked."""

    def __init__(self, fq, z, vis, n_features, device, dtype):
        self.fq = torch.as_tensor(fq, device=device)
        self.c = torch.as_tensor(np.where(vis, z, 0.0), device=device, dtype=dtype)
        self.query = torch.as_tensor(~vis, device=device, dtype=dtype)
        self.vis = torch.as_tensor(vis, device=device, dtype=dtype)
        self.onehot = torch.nn.functional.one_hot(self.fq, n_features).to(dtype)            # (b, P, F)
        self.target = torch.as_tensor(z, device=device, dtype=dtype)[..., None] * self.onehot

    def __len__(self) -> int:
        return self.fq.shape[0]


class Transformer(torch.nn.Module):
    """The network of the module docstring, on fixed data embeddings E (d, P) and V (d, F)."""

    def __init__(self, E: np.ndarray, V: np.ndarray, *, attention: str, value: str, heads: int, layernorm: bool,
                 depth: int, init_scale: float, score_init=None, rng: np.random.Generator, dtype, device):
        super().__init__()
        d = E.shape[0]
        self.attention, self.value, self.heads, self.layernorm, self.depth = attention, value, heads, layernorm, depth
        self.register_buffer("E", torch.as_tensor(E, dtype=dtype, device=device))
        self.register_buffer("V", torch.as_tensor(V, dtype=dtype, device=device))
        self.register_buffer("gram", self.V.T @ self.V)

        def param(shape, scale, draw=None):
            values = (draw if draw is not None else rng.standard_normal(shape)) * scale if scale > 0 else np.zeros(shape)
            return torch.nn.Parameter(torch.as_tensor(values, dtype=dtype, device=device))

        self.Q = torch.nn.ParameterList()
        self.WQ = torch.nn.ParameterList()
        self.WK = torch.nn.ParameterList()
        self.WV = torch.nn.ParameterList()
        self.norms = torch.nn.ModuleList()
        d_k = -(-d // heads)
        for layer in range(depth):
            if attention == "merged":
                self.Q.append(param((heads, d, d), init_scale, score_init if layer == 0 else None))
            else:
                self.WQ.append(param((heads, d_k, d), init_scale))
                self.WK.append(param((heads, d_k, d), init_scale))
            if value == "learned":
                self.WV.append(param((heads, d, d), 1.0 / math.sqrt(d)))
            if layernorm:
                self.norms.append(torch.nn.LayerNorm(d, eps=1e-5, dtype=dtype, device=device))

    # ---- parts ------------------------------------------------------------------------------
    def score_matrices(self, layer: int) -> torch.Tensor:
        """(heads, d, d) the effective Q_h of a layer."""
        if self.attention == "merged":
            return self.Q[layer]
        return self.WQ[layer].transpose(1, 2) @ self.WK[layer]

    def effective_Q(self) -> np.ndarray | None:
        """The single (d, d) Q of a one-head, one-layer network, else None."""
        if self.heads != 1 or self.depth != 1:
            return None
        with torch.no_grad():
            return self.score_matrices(0)[0].detach().cpu().numpy().astype(np.float64)

    def forward(self, batch: Batch):
        """(loss: the mean over samples of the masked half-sum, w: (b, P, P) the last layer's
        attention, mean over heads)."""
        if not self.layernorm and (self.value == "identity" or self.depth == 1):
            return self._forward_features(batch)
        return self._forward_tokens(batch)

    def _head_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over the head axis 1 (a view for one head: no copy of a (b, P, P) tensor)."""
        return x[:, 0] if self.heads == 1 else x.mean(dim=1)

    def _loss(self, residual_sq: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean over samples of 1/2 sum over masked p of the squared error (b, P)."""
        return 0.5 * (residual_sq * batch.query).sum() / len(batch)

    def _forward_features(self, batch: Batch):
        # With identity values and no LayerNorm every token stays e_q + V g_q with g_q in feature
        # coordinates (g = 1{unmasked} z onehot(f) in the first layer; each layer adds its
        # output, a mixture of contents). A score is then
        #   e_p^T Q e_q + e_p^T Q V g_q + g_p^T V^T Q e_q + g_p^T V^T Q V g_q,
        # so only (P x P), (P x F), (F x F) projections of Q are needed and the (b, P, d) token
        # tensor is never formed. A learned value in a single layer predicts
        # W_V sum_q w_pq (e_q + V g_q) = W_V (E w_p + V mix_p), which needs no tokens either.
        g = batch.c[..., None] * batch.onehot                        # (b, P, F)
        for layer in range(self.depth):
            Qh = self.score_matrices(layer)                          # (H, d, d)
            EQ, VQ = self.E.T @ Qh, self.V.T @ Qh                    # (H, P, d), (H, F, d)
            gt = g[:, None].transpose(-1, -2)                        # (b, 1, F, P)
            scores = (EQ @ self.E)[None] + (EQ @ self.V)[None] @ gt  # (b, H, P, P)
            if layer > 0 or self.depth > 1:
                # queries with content (every query past the first layer, and the unmasked
                # queries of a first layer that feeds another); a masked query of the first
                # layer has g_p = 0 and the model's score e_p^T Q h_q
                gq = g[:, None]                                      # (b, 1, P, F)
                scores = scores + gq @ (VQ @ self.E)[None] + (gq @ (VQ @ self.V)[None]) @ gt
            w = torch.softmax(scores, dim=-1)                        # (b, H, P, P)
            mix = w @ g[:, None]                                     # (b, H, P, F): the values' contents
            if layer < self.depth - 1:
                g = g + self._head_mean(mix)
        if self.value == "identity":
            r = self._head_mean(mix) - batch.target                  # residual in feature coordinates
            sq = ((r @ self.gram) * r).sum(dim=-1)
        else:
            WV = self.WV[0]                                          # (H, d, d)
            # one GEMM over (head, key) pairs each; a broadcast matmul would copy W_V E per sample
            out = (torch.einsum("bhpq,hdq->bpd", w, WV @ self.E)
                   + torch.einsum("bhpf,hdf->bpd", mix, WV @ self.V)) / self.heads
            r = out - batch.target @ self.V.T
            sq = (r * r).sum(dim=-1)
        return self._loss(sq, batch), self._head_mean(w)

    def _forward_tokens(self, batch: Batch):
        pos = self.E.T[None]                                         # (1, P, d)
        x = batch.c[..., None] * self.V.T[batch.fq]                  # (b, P, d) visible contents
        h = pos + x
        for layer in range(self.depth):
            u = self.norms[layer](h) if self.layernorm else h
            Qh = self.score_matrices(layer)                          # (H, d, d)
            scores = (u[:, None] @ Qh) @ u[:, None].transpose(-1, -2)     # (b, H, P, P)
            w = torch.softmax(scores, dim=-1)
            if self.value == "identity":
                out = self._head_mean(w @ (h - pos)[:, None])        # the keys' contents
            else:
                out = self._head_mean(w @ (u[:, None] @ self.WV[layer].transpose(1, 2)))
            if layer < self.depth - 1:
                h = h + out
        r = out - batch.target @ self.V.T
        return self._loss((r * r).sum(dim=-1), batch), self._head_mean(w)


def _measure(net, model: DataModel, eval_data, make_batch, device):
    """(attention_by_area (K, P, N), masked_mass (K, P), eval loss) on the evaluation batch
    (fq, z, vis); ``make_batch(fq, z, vis)`` turns a chunk of it into the network's input, which
    has ``fq``, ``vis`` and ``query`` tensors (b, P) like :class:`Batch`."""
    fq, z, vis = eval_data
    K, P = model.n_clusters, model.n_patches
    n_areas = max(cl.n_areas for cl in model.clusters)
    feature_cluster = torch.as_tensor(np.array([k for k, _ in model.features]), device=device)
    feature_area = torch.as_tensor(np.array([j for _, j in model.features]), device=device)
    by_area = torch.zeros((K, P, n_areas), dtype=torch.float64, device=device)
    masked = torch.zeros((K, P), dtype=torch.float64, device=device)
    count = torch.zeros((K, P), dtype=torch.float64, device=device)
    total = 0.0
    with torch.no_grad():
        for start in range(0, fq.shape[0], EVAL_CHUNK):
            sl = slice(start, start + EVAL_CHUNK)
            batch = make_batch(fq[sl], z[sl], vis[sl])
            loss, w = net(batch)
            dtype = w.dtype
            total += float(loss) * len(batch)
            area = torch.nn.functional.one_hot(feature_area[batch.fq], n_areas).to(dtype)   # (b, P, N) key areas
            q = batch.query                                                               # masked queries
            # per cluster k: sum over samples of cluster k of the masked queries' masses
            cluster = torch.nn.functional.one_hot(feature_cluster[batch.fq[:, 0]], K).to(dtype)   # (b, K)
            kq = cluster[:, :, None] * q[:, None, :]                                      # (b, K, P)
            on_area = (w * batch.vis[:, None, :]) @ area                                  # (b, P, N)
            on_masked = (w * (1.0 - batch.vis)[:, None, :]).sum(dim=-1)                   # (b, P)
            by_area += torch.einsum("bkp,bpn->kpn", kq, on_area).double()
            masked += torch.einsum("bkp,bp->kp", kq, on_masked).double()
            count += kq.sum(dim=0).double()
    by_area, masked, count = (x.cpu().numpy() for x in (by_area, masked, count))
    with np.errstate(invalid="ignore", divide="ignore"):
        by_area = by_area / count[..., None]
        masked = masked / count
    for kk, cl in enumerate(model.clusters):          # areas a cluster does not have
        by_area[kk, :, cl.n_areas:] = np.nan
    return by_area, masked, total / fq.shape[0]


def _record_steps(steps: int, record_every: int, record_steps) -> np.ndarray:
    if record_steps is None:
        grid = np.arange(0, steps + 1, record_every)
    else:
        try:
            grid = np.asarray(record_steps)
            ok = grid.ndim == 1 and grid.dtype.kind in "iu" and grid.size > 0
        except (TypeError, ValueError):
            ok = False
        if not ok or grid.min() < 0 or grid.max() > steps:
            raise InvalidInputError(f"record_steps must be a 1-d sequence of integer steps in 0..steps={steps}, "
                                    f"got {record_steps!r}")
    return np.unique(np.concatenate([[0, steps], grid])).astype(np.int64)


def _device(device):
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"device must be a torch device name such as 'cpu' or 'cuda', got {device!r}") from None


def train_torch(model: DataModel, *, steps: int, lr: float, batch_size: int = 256, seed: int = 0,
                attention: str = "merged", value: str = "identity", heads: int = 1, layernorm: bool = False,
                depth: int = 1, embedding: str = "orthonormal", dim: int | None = None, optimizer: str = "sgd",
                init_scale: float | None = None, record_every: int = 100, record_steps=None,
                eval_size: int = 2048, dtype: str = "float64", device=None, progress=None) -> TrainRun:
    """Train a PyTorch transformer on masked reconstruction of the model's data.

    Parameters
    ----------
    model : DataModel
        The data distribution to sample from.
    steps, lr, batch_size : int, float, int
        Optimiser steps, step size (record i is at t = lr * step), samples per step.
    seed : int
        Fixes the embeddings, the initial parameters, every minibatch and the evaluation batch.
    attention : {"merged", "factorized"}
        One d x d score matrix per head (the model's), or Q = W_Q^T W_K.
    value : {"identity", "learned"}
        The key's content (the model's) or a learned W_V applied to the key's token.
    heads, depth : int
        Heads per layer (outputs averaged) and layers (residual stream; the last one predicts).
    layernorm : bool
        LayerNorm (learned gain and bias) on the tokens before the scores.
    embedding : {"orthonormal", "gaussian"}
        The data's embeddings E, V: orthonormal columns, or i.i.d. N(0, 1/d) entries.
    dim : int, optional
        Width d, at least (and by default) F + P.
    optimizer : {"sgd", "adam"}
        Plain SGD, or Adam with torch's defaults.
    init_scale : float, optional
        Standard deviation of the entries of the score parameters at step 0 (merged Q_h, or W_Q
        and W_K). Default: 0 for one merged head (the flow's Q(0) = 0), 1/sqrt(d) otherwise.
    record_every : int
        Steps between records (ignored when ``record_steps`` is given).
    record_steps : sequence of int, optional
        Explicit record steps (step 0 and the last step are always recorded), e.g. log-spaced.
    eval_size : int
        Samples in the fixed evaluation batch the measured observables are read from.
    dtype : {"float64", "float32"}
        Tensor precision; float64 (default) makes the model's rung differ from the Numba
        trainer only by rounding.
    device : str, optional
        torch device; default "cuda" when available, else "cpu".
    progress : bool, optional
        tqdm bar; default only on a terminal.

    Returns
    -------
    TrainRun
        With ``attention_by_area``, ``masked_mass`` and ``eval_loss`` always; A, B, Q and the
        exact ``target_attention`` where the network has them (see the module docstring),
        otherwise ``target_attention`` is the measured own-area mass. ``status`` -1 (and a
        RuntimeWarning) when the batch loss stopped being finite: the run diverged and its
        records stop at the last finite record.
    """
    instance("model", model, DataModel)
    steps, lr, batch_size, seed, record_every, eval_size = _common_options(
        steps, lr, batch_size, seed, optimizer, dtype, record_every, eval_size)
    choice("attention", attention, ATTENTIONS)
    choice("value", value, VALUES)
    choice("embedding", embedding, EMBEDDINGS)
    heads, depth = positive_int("heads", heads), positive_int("depth", depth)
    if not isinstance(layernorm, (bool, np.bool_)):
        raise InvalidInputError(f"layernorm must be True or False, got {layernorm!r}")
    d = check_width(model, dim, "dim")
    init_scale = _init_scale(init_scale, attention, heads, d)
    grid = _record_steps(steps, record_every, record_steps)
    dev, tdtype = _device(device), DTYPES[dtype]
    architecture = {"trainer": "torch", "attention": attention, "value": value, "heads": heads,
                    "layernorm": bool(layernorm), "depth": depth, "embedding": embedding, "optimizer": optimizer,
                    "dtype": dtype, "eval_size": eval_size}
    exact = has_correlations(attention, value, heads, layernorm, depth, embedding)
    start = time.perf_counter()

    rng = np.random.default_rng(seed)                         # the Numba trainer's stream
    V, E = make_embeddings(model, d, embedding, rng)
    the_model = attention == "merged" and heads == 1 and depth == 1
    score_init = rng.standard_normal((1, d, d)) if (the_model and init_scale > 0) else None
    net = Transformer(E, V, attention=attention, value=value, heads=heads, layernorm=bool(layernorm), depth=depth,
                      init_scale=init_scale, score_init=score_init, rng=np.random.default_rng([seed, 1]),
                      dtype=tdtype, device=dev)
    sampler = BatchSampler(model)
    eval_data = sampler.sample(np.random.default_rng([seed, 2]), eval_size)

    def make_batch(fq, z, vis):
        return Batch(fq, z, vis, model.n_features, dev, tdtype)

    rec = {key: [] for key in ("step", "loss", "A", "B", "att", "by_area", "masked", "eval_loss")}

    def record(step, loss_mean):
        by_area = _record_measured(rec, net, model, eval_data, make_batch, dev, step, loss_mean)
        if exact:
            Q = net.effective_Q()
            A, B = E.T @ Q @ V, E.T @ Q @ E
            rec["A"].append(A)
            rec["B"].append(B)
            rec["att"].append(target_attention_at(model, A, B))
        else:
            rec["att"].append(own_area_mass(model, by_area))

    status, message = _optimise(net, _optimiser(net, optimizer, lr), lambda: make_batch(*sampler.sample(rng, batch_size)),
                                record, steps=steps, grid=grid, lr=lr, progress=progress)
    steps_rec = np.array(rec["step"])
    return TrainRun(
        t=lr * steps_rec.astype(np.float64), step=steps_rec, A=np.array(rec["A"]) if exact else None,
        B=np.array(rec["B"]) if exact else None, loss=np.array(rec["loss"]), target_attention=np.array(rec["att"]),
        Q=net.effective_Q() if exact else None, E=E, V=V, model=model, seed=int(seed), steps=int(steps),
        lr=float(lr), batch_size=int(batch_size), d=d, embeddings=embedding, init_scale=float(init_scale),
        record_every=int(record_every) if record_steps is None else 0, wall_time=time.perf_counter() - start,
        status=status, message=message, attention_by_area=np.array(rec["by_area"]),
        masked_mass=np.array(rec["masked"]), eval_loss=np.array(rec["eval_loss"]), architecture=architecture)


# ---- shared by train_torch and train_patch_mae -------------------------------------------------
def _common_options(steps, lr, batch_size, seed, optimizer, dtype, record_every, eval_size):
    """The validated (steps, lr, batch_size, seed, record_every, eval_size)."""
    steps, batch_size = positive_int("steps", steps), positive_int("batch_size", batch_size)
    lr, seed = positive_real("lr", lr), nonnegative_int("seed", seed)
    choice("optimizer", optimizer, OPTIMIZERS)
    choice("dtype", dtype, DTYPES)
    record_every, eval_size = positive_int("record_every", record_every), positive_int("eval_size", eval_size)
    return steps, lr, batch_size, seed, record_every, eval_size


def _init_scale(init_scale, attention: str, heads: int, d: int) -> float:
    """The score parameters' initial standard deviation: default 0 for one merged head (the
    flow's Q(0) = 0), 1/sqrt(d) otherwise; 0 refused for a factorised Q (a saddle)."""
    if init_scale is None:
        init_scale = 0.0 if (attention == "merged" and heads == 1) else 1.0 / math.sqrt(d)
    elif not is_real(init_scale):
        raise InvalidInputError(f"init_scale must be a finite real number >= 0 or None, got {init_scale!r}")
    init_scale = real("init_scale", init_scale, low=0.0)
    if attention == "factorized" and init_scale == 0.0:
        raise InvalidInputError("init_scale must be > 0 with attention='factorized': W_Q = W_K = 0 is a saddle "
                                "point where every gradient vanishes")
    return init_scale


def _optimiser(params, optimizer: str, lr: float):
    """Plain SGD or Adam (torch's defaults) on a module's parameters or on parameter groups."""
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    return (torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam)(params, lr=lr)


def own_area_mass(model: DataModel, by_area: np.ndarray) -> np.ndarray:
    """(K, P) the measured mass of every masked query on the unmasked keys of its own area."""
    own = np.stack([model.clusters[k].areas for k in range(model.n_clusters)])        # (K, P)
    return np.take_along_axis(by_area, own[..., None], axis=2)[..., 0]


def _record_measured(rec: dict, net, model, eval_data, make_batch, device, step: int, loss_mean: float):
    """Append the measured observables of a record to ``rec``; returns its attention by area."""
    by_area, masked, eval_loss = _measure(net, model, eval_data, make_batch, device)
    rec["step"].append(step)
    rec["loss"].append(loss_mean)
    rec["by_area"].append(by_area)
    rec["masked"].append(masked)
    rec["eval_loss"].append(eval_loss)
    return by_area


def _step(net, opt, batch) -> float:
    """One optimiser step on a batch; returns its loss (no step is taken when it is not finite)."""
    loss, _ = net(batch)
    value = float(loss.detach())
    if math.isfinite(value):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return value


def _optimise(net, opt, draw, record, *, steps: int, grid: np.ndarray, lr: float, progress,
              who: str = "gradflow.train_torch") -> tuple[int, str]:
    """Optimiser steps on batches ``draw()`` until ``steps``, ``record(step, mean batch loss since
    the previous record)`` at step 0 and the steps of ``grid``; (status, message). A batch loss
    that is not finite stops the run (status -1, a RuntimeWarning)."""
    # subnormal floats (attention weights below ~1e-38 in float32, as sharp softmaxes make) cost
    # ~4x per operation on x86 CPUs: flush them to zero while training (a change below 1e-38)
    flushing = torch.set_flush_denormal(True)
    record(0, np.nan)
    status, message = 0, "finished"
    acc, n_acc, step, next_rec, last = 0.0, 0, 0, 1, 0
    bar = _progress_bar(progress, steps, 0)
    try:
        while step < steps:
            value_now = _step(net, opt, draw())
            if not math.isfinite(value_now):
                status = -1
                message = (f"diverged at step {step + 1}: the batch loss is {value_now!r}; lower lr "
                           f"(now {lr:g}); the records stop at step {last}")
                break
            step += 1
            acc, n_acc = acc + value_now, n_acc + 1
            if bar is not None:
                bar.update(1)
            if step == grid[next_rec]:
                record(step, acc / n_acc)
                acc, n_acc, next_rec, last = 0.0, 0, next_rec + 1, step
    finally:
        if bar is not None:
            bar.close()
        if flushing:
            torch.set_flush_denormal(False)      # torch's default
    if status < 0:
        warnings.warn(f"{who}: {message}", RuntimeWarning, stacklevel=4)   # past the public trainer
    return status, message


# ---- the MAE on pixel patches (the ladder's top rung) -------------------------------------------
class PixelBatch:
    """A minibatch of the MAE: ``fq``, ``vis``, ``query`` (b, P) as in :class:`Batch` (the data
    model's features, unmasked, masked), ``image`` (b,) the image of every sample and ``x``
    (b, P, D) its patch contents."""

    def __init__(self, fq, vis, contents: torch.Tensor, image_of_feature: torch.Tensor, device, dtype):
        self.fq = torch.as_tensor(fq, device=device)
        self.vis = torch.as_tensor(vis, device=device, dtype=dtype)
        self.query = 1.0 - self.vis
        self.image = image_of_feature[self.fq[:, 0]]
        self.x = contents[self.image]

    def __len__(self) -> int:
        return self.fq.shape[0]


class PatchMAE(torch.nn.Module):
    """One-layer masked autoencoder on pixel patches (docs/model.md section 6).

    * **Tokens.** h_q = pos_q + 1{q unmasked} (W_e x_q + b_e) + 1{q masked} m: a learned
      positional embedding pos_q in R^d (N(0, 1/d) entries at t = 0, norm ~1 like the model's
      orthonormal positions), a learned linear patch embedding W_e (d x D, N(0, 1/D) entries),
      b_e (0 at t = 0) of the pixel content x_q in R^D, and with ``mask_token=True`` a learned
      mask token m (0 at t = 0; without it a masked token is its position, as in the model).
    * **Scores.** A masked query p scores key q as s_pq = (pos_p + m)^T Q h_q, every patch a key
      (itself and the other masked ones included); merged Q (d x d, N(0, init_scale^2), default
      0: the flow's start) or factorised Q = W_Q^T W_K (d x d each, default N(0, 1/d)).
    * **Value.** The key's embedded content v_q = h_q - pos_q (the model's identity value, in
      the embedding): 1{q unmasked} (W_e x_q + b_e) + 1{q masked} m.
    * **Output.** yhat_p = W_d sum_q w_pq v_q + b_d: a learned linear decoder back to pixels,
      W_d (D x d, N(0, 1/d) entries), b_d (0 at t = 0).
    * **Loss.** The mean over samples of 1/2 sum over masked p of ||yhat_p - x_p||^2: docs/model.md
      section 2 with the pixel contents x_p in place of z_q v_f.
    """

    def __init__(self, n_positions: int, n_pixels: int, d: int, *, attention: str, mask_token: bool,
                 init_scale: float, rng: np.random.Generator, dtype, device):
        super().__init__()
        self.attention, self.mask_token = attention, mask_token

        def param(shape, scale):
            values = rng.standard_normal(shape) * scale if scale > 0 else np.zeros(shape)
            return torch.nn.Parameter(torch.as_tensor(values, dtype=dtype, device=device))

        self.pos = param((n_positions, d), 1.0 / math.sqrt(d))
        self.W_e, self.b_e = param((d, n_pixels), 1.0 / math.sqrt(n_pixels)), param((d,), 0.0)
        self.mask = param((d,), 0.0) if mask_token else None
        if attention == "merged":
            self.Q = param((d, d), init_scale)
        else:
            self.W_Q, self.W_K = param((d, d), init_scale), param((d, d), init_scale)
        self.W_d, self.b_d = param((n_pixels, d), 1.0 / math.sqrt(d)), param((n_pixels,), 0.0)

    def score_matrix(self) -> torch.Tensor:
        return self.Q if self.attention == "merged" else self.W_Q.T @ self.W_K

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) the learned embedding W_e x + b_e of contents x (..., D)."""
        return x @ self.W_e.T + self.b_e

    def slow_parameters(self) -> list:
        """The linear maps on contents (patch embedding, mask token, decoder): their curvature
        grows with the number of masked patches the loss sums (:func:`train_patch_mae`)."""
        return [p for p in (self.W_e, self.b_e, self.mask, self.W_d, self.b_d) if p is not None]

    def forward(self, batch: PixelBatch):
        """(loss, w (b, P, P)): w[:, p] is the attention of p as a masked query, zero where p is
        unmasked; w is None while gradients are recorded (a training step). Only the masked
        queries are computed: those of a sample come first in ``order``, padded to the batch's
        largest count (padding rows carry no loss)."""
        vis = batch.vis[..., None]
        values = vis * self.embed(batch.x)                            # (b, P, d)
        query = self.pos
        if self.mask is not None:
            values = values + (1.0 - vis) * self.mask
            query = query + self.mask
        keys = self.pos + values
        n_masked = batch.query.sum(dim=1)
        M = max(int(n_masked.max()), 1)
        order = torch.argsort(batch.vis, dim=1, stable=True)[:, :M]    # (b, M) masked positions first
        real = (torch.arange(M, device=order.device)[None] < n_masked[:, None]).to(values.dtype)
        scores = ((query @ self.score_matrix())[order]) @ keys.transpose(1, 2)   # (b, M, P)
        w = torch.softmax(scores, dim=-1)
        target = torch.gather(batch.x, 1, order[..., None].expand(-1, -1, batch.x.shape[2]))
        r = (w @ values) @ self.W_d.T + self.b_d - target               # (b, M, D)
        loss = 0.5 * ((r * r).sum(dim=-1) * real).sum() / len(batch)
        if torch.is_grad_enabled():          # a training step: the (b, P, P) map is not needed
            return loss, None
        full = torch.zeros(len(batch), batch.vis.shape[1], batch.vis.shape[1], dtype=w.dtype, device=w.device)
        full.scatter_(1, order[..., None].expand(-1, -1, w.shape[2]), w * real[..., None])
        return loss, full


def content_lr(lr: float, model: DataModel, optimizer: str) -> float:
    """The default lr of the MAE's linear maps on contents: lr / (gamma P) with SGD, lr with Adam.

    The loss sums the squared error over the ~gamma P masked patches of a sample, so the
    curvature of the loss along the decoder (and the patch embedding feeding the values) is
    ~gamma P times that of one patch's error: plain SGD on them at the score lr diverges (lr 0.03
    already does at 14 x 14). Q and the positional embeddings, which act through the softmax as
    the model's Q does, keep lr (the flow's clock). Adam normalises every step, so it takes lr.
    """
    return lr / (model.mask_ratio * model.n_patches) if optimizer == "sgd" else lr


def train_patch_mae(data, *, steps: int, lr: float, dim: int, attention: str = "merged", mask_token: bool = False,
                    embedding_lr: float | None = None, batch_size: int = 256, seed: int = 0, optimizer: str = "sgd",
                    init_scale: float | None = None, record_every: int = 100, record_steps=None,
                    eval_size: int = 2048, dtype: str = "float32", device=None, progress=None) -> TrainRun:
    """Train :class:`PatchMAE` on an :class:`~gradflow.training.mae.MAEData`; see
    :func:`gradflow.training.mae.train_mae` (the public entry point)."""
    model = data.model
    steps, lr, batch_size, seed, record_every, eval_size = _common_options(
        steps, lr, batch_size, seed, optimizer, dtype, record_every, eval_size)
    embedding_lr = content_lr(lr, model, optimizer) if embedding_lr is None else positive_real("embedding_lr",
                                                                                               embedding_lr)
    choice("attention", attention, ATTENTIONS)
    dim = positive_int("dim", dim)
    if not isinstance(mask_token, (bool, np.bool_)):
        raise InvalidInputError(f"mask_token must be True or False, got {mask_token!r}")
    init_scale = _init_scale(init_scale, attention, 1, dim)
    grid = _record_steps(steps, record_every, record_steps)
    dev, tdtype = _device(device), DTYPES[dtype]
    architecture = {"trainer": "torch-mae", "images": list(data.names), "grid": list(data.grid), "patch": data.patch,
                    "channels": data.channels, "pixels": data.n_pixels, "dim": dim, "attention": attention,
                    "mask_token": bool(mask_token), "optimizer": optimizer, "embedding_lr": embedding_lr,
                    "dtype": dtype, "eval_size": eval_size}
    start = time.perf_counter()
    contents = torch.as_tensor(data.contents, dtype=tdtype, device=dev)              # (K, P, D)
    image_of_feature = torch.as_tensor(np.array([k for k, _ in model.features]), device=dev)
    net = PatchMAE(model.n_patches, data.n_pixels, dim, attention=attention, mask_token=bool(mask_token),
                   init_scale=init_scale, rng=np.random.default_rng([seed, 1]), dtype=tdtype, device=dev)
    rng = np.random.default_rng(seed)
    sampler = BatchSampler(model)
    eval_data = sampler.sample(np.random.default_rng([seed, 2]), eval_size)

    def make_batch(fq, z, vis):
        return PixelBatch(fq, vis, contents, image_of_feature, dev, tdtype)

    rec = {key: [] for key in ("step", "loss", "att", "by_area", "masked", "eval_loss")}

    def record(step, loss_mean):
        rec["att"].append(own_area_mass(model, _record_measured(rec, net, model, eval_data, make_batch, dev, step,
                                                                loss_mean)))

    slow = {id(p) for p in net.slow_parameters()}
    groups = [{"params": [p for p in net.parameters() if id(p) not in slow], "lr": lr},
              {"params": net.slow_parameters(), "lr": embedding_lr}]
    status, message = _optimise(net, _optimiser(groups, optimizer, lr), lambda: make_batch(*sampler.sample(rng, batch_size)),
                                record, steps=steps, grid=grid, lr=lr, progress=progress, who="gradflow.train_mae")
    with torch.no_grad():
        E = net.pos.detach().cpu().numpy().astype(np.float64).T                       # (d, P)
        means = np.stack([data.contents[k][model.clusters[k].areas == j].mean(axis=0) for k, j in model.features])
        V = net.embed(torch.as_tensor(means, dtype=tdtype, device=dev)).cpu().numpy().astype(np.float64).T
    steps_rec = np.array(rec["step"])
    return TrainRun(
        t=lr * steps_rec.astype(np.float64), step=steps_rec, A=None, B=None, loss=np.array(rec["loss"]),
        target_attention=np.array(rec["att"]), Q=None, E=E, V=V, model=model, seed=int(seed), steps=int(steps),
        lr=float(lr), batch_size=int(batch_size), d=dim, embeddings="learned", init_scale=float(init_scale),
        record_every=int(record_every) if record_steps is None else 0, wall_time=time.perf_counter() - start,
        status=status, message=message, attention_by_area=np.array(rec["by_area"]),
        masked_mass=np.array(rec["masked"]), eval_loss=np.array(rec["eval_loss"]), architecture=architecture)


# ---- speed --------------------------------------------------------------------------------------
def seconds_per_step(model: DataModel, *, steps: int, batch_size: int, lr: float = 0.5, seed: int = 0,
                     dtype: str = "float64", warmup: int = 2) -> float:
    """Wall seconds per SGD step of the bottom rung (``train_torch`` with its defaults) on
    ``model``: the steps ``train_torch`` takes (draw a batch, forward, backward, update), timed
    after ``warmup`` untimed steps, without evaluation records. Uses torch's current threads."""
    steps, batch_size = positive_int("steps", steps), positive_int("batch_size", batch_size)
    choice("dtype", dtype, DTYPES)
    dev, tdtype = _device(None), DTYPES[dtype]
    rng = np.random.default_rng(seed)
    V, E = make_embeddings(model, model.n_features + model.n_patches, "orthonormal", rng)
    net = Transformer(E, V, attention="merged", value="identity", heads=1, layernorm=False, depth=1, init_scale=0.0,
                      rng=np.random.default_rng([seed, 1]), dtype=tdtype, device=dev)
    opt, sampler = _optimiser(net, "sgd", positive_real("lr", lr)), BatchSampler(model)
    for _ in range(warmup):
        _step(net, opt, Batch(*sampler.sample(rng, batch_size), model.n_features, dev, tdtype))
    start = time.perf_counter()
    for _ in range(steps):
        _step(net, opt, Batch(*sampler.sample(rng, batch_size), model.n_features, dev, tdtype))
    return (time.perf_counter() - start) / steps
