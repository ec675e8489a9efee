"""A real one-layer softmax transformer trained by SGD on sampled data (docs/model.md section 6).

Nothing here uses the population formulas to train: every step samples a minibatch
(cluster, amplitudes, Bernoulli mask), runs softmax attention with the full d x d matrix Q and
takes an SGD step along the exact gradient of the batch loss (the mean over samples of the
masked half-sum of squared errors). The population formulas are used only to *report* the
expected attention of the projected state, the observable ``solve`` reports, so that the two can
be compared.
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._validate import (
    check_memory,
    choice,
    instance,
    is_int,
    nonnegative_int,
    positive_int,
    positive_real,
    real,
)
from ..errors import InvalidInputError
from ..model import DataModel
from ..theory.population import target_attention_at
from ..theory.state import LOG_WEIGHT_LIMIT
from .checkpoint import CHECKPOINT_VERSION, RECORDS, load_checkpoint, save_checkpoint
from .run import TrainRun
from .sampling import BatchSampler
from .transformer import batch_loss_grad, make_embeddings, scores, warm_up

EMBEDDINGS = ("orthonormal", "gaussian")


def check_width(model: DataModel, d, name: str = "d") -> int:
    """The embedding width ``name``: default and minimum F + P (orthonormal features and
    positions need that many dimensions; docs/model.md section 2)."""
    d_min = model.n_features + model.n_patches
    if d is None:
        return d_min
    if not is_int(d) or d < d_min:
        raise InvalidInputError(f"{name} must be an integer >= F + P = {d_min} (the width that holds the data's "
                                f"embeddings), got {d!r}")
    return int(d)


@dataclass
class _Progress:
    """The mutable state of a run: matrices, generator, counters and records."""

    Q: np.ndarray
    E: np.ndarray
    V: np.ndarray
    rng: np.random.Generator
    step: int
    records: dict
    acc: float = 0.0          # batch losses summed since the last record
    n_acc: int = 0


def check_training_memory(model: DataModel, d: int, batch_size: int, steps: int, record_every: int) -> None:
    """Refuse, before allocating, a run whose arrays cannot fit: Q and the step's d x d
    temporaries (4 d^2 numbers), the embeddings and their QR (4 d (F + P) + (F + P)^2), a batch
    (fq, z, the mask and its uniforms: ~3.2 b P, amplitudes b F), the kernel's per-thread
    accumulators (threads x P (P + F)) and the records of A, B (kept twice: lists, then arrays)."""
    import numba
    F, P, K = model.n_features, model.n_patches, model.n_clusters
    n_records = steps // record_every + 2
    state = 4.0 * d * d + 4.0 * d * (F + P) + float(F + P) ** 2
    batch = 3.2 * batch_size * P + float(batch_size) * F + numba.config.NUMBA_NUM_THREADS * float(P) * (P + F)
    records = 2.0 * n_records * (float(P) * F + float(P) * P + K * P)
    check_memory(state + batch + records,
                 f"training at d = {d} (d^2 = {float(d) * d:.3g} numbers for Q), batch_size = {batch_size} "
                 f"(x P = {P}) and {n_records} records")


def _largest_amplitude(model: DataModel) -> float:
    return max(a.values.max() for c in model.clusters for a in c.amplitudes)


def _out_of_range(A: np.ndarray, B: np.ndarray, z_max: float) -> tuple[float, str | None]:
    """(score span, the reason the scores left any sane range or None): the largest |score|
    a key can get, |B| + |A| z, against the range the observables accept."""
    span = np.abs(B).max() + np.abs(A).max() * z_max
    if not np.isfinite(span) or span > LOG_WEIGHT_LIMIT:
        return span, f"attention scores reach {span:.3g} (beyond {LOG_WEIGHT_LIMIT:g})"
    return span, None


def _warm_up(model: DataModel) -> None:
    """Compile (or load from Numba's cache) the kernels a run uses, the SGD step's and the
    records' (the expected attention of the model), so that ``wall_time`` and the steps per
    second count the run only."""
    warm_up()
    P, F = model.n_patches, model.n_features
    target_attention_at(model, np.zeros((P, F)), np.zeros((P, P)))


def _fresh(model, d, embeddings, seed, init_scale) -> _Progress:
    rng = np.random.default_rng(seed)
    V, E = make_embeddings(model, d, embeddings, rng)
    Q = init_scale * rng.standard_normal((d, d)) if init_scale > 0 else np.zeros((d, d))
    return _Progress(Q, E, V, rng, 0, {key: [] for key in RECORDS})


def _resumed(path, meta, record_every) -> _Progress:
    ck = load_checkpoint(Path(path), meta)
    rng = np.random.default_rng()
    rng.bit_generator.state = ck["rng_state"]
    records = {key: list(ck[f"rec_{key}"]) for key in RECORDS}
    if records["step"][-1] % record_every:
        # the end-of-run record of a shorter run: an uninterrupted run has no record here
        for val in records.values():
            val.pop()
    return _Progress(ck["Q"].copy(), ck["E"], ck["V"], rng, int(ck["step"]), records,
                     float(ck["acc"]), int(ck["n_acc"]))


def _record(run: _Progress, model: DataModel, lr: float, loss_mean: float) -> str | None:
    """Append a record; the reason the run diverged instead, when its scores left any sane range."""
    A = run.E.T @ run.Q @ run.V
    B = run.E.T @ run.Q @ run.E
    why = _out_of_range(A, B, _largest_amplitude(model))[1]
    if why is not None:
        return why
    for key, value in (("t", lr * run.step), ("step", run.step), ("A", A), ("B", B), ("loss", loss_mean),
                       ("att", target_attention_at(model, A, B))):
        run.records[key].append(value)
    return None


def _progress_bar(progress, total: int, initial: int):
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="step", desc="gradflow train", leave=False)


def train_transformer(model: DataModel, *, steps: int, lr: float, batch_size: int, d: int | None = None,
                      seed: int = 0, init_scale: float = 0.0, record_every: int = 100,
                      embeddings: str = "orthonormal", progress=None, checkpoint=None,
                      resume=None) -> TrainRun:
    """Train a one-layer softmax transformer by SGD on masked reconstruction.

    Parameters
    ----------
    model : DataModel
        The data distribution to sample from.
    steps : int
        Total number of SGD steps (also when resuming).
    lr : float
        Step size; record i is at gradient-flow time t = lr * step.
    batch_size : int
        Samples per step; the batch loss is the mean over samples of the masked half-sum.
    d : int, optional
        Embedding width, at least (and by default) F + P.
    seed : int
        Seeds the embeddings, the initial Q and every minibatch: same seed, same numbers.
    init_scale : float
        Q(0) has i.i.d. N(0, init_scale^2) entries (0: Q(0) = 0 as in the flow).
    record_every : int
        Steps between records (the last step is always recorded).
    embeddings : {"orthonormal", "gaussian"}
        Orthonormal features and positions (the model's assumption), or i.i.d. N(0, 1/d) entries.
    progress : bool, optional
        tqdm bar; default only on a terminal.
    checkpoint : path, optional
        Save the full state at every record and at the end (atomically).
    resume : path, optional
        Continue from a checkpoint made with the same arguments (``steps`` may grow); the result
        is identical to an uninterrupted run.

    Returns
    -------
    TrainRun
        ``status`` -1 (and a RuntimeWarning) when the run diverged (the batch loss stopped being
        finite, or the scores left the range the observables accept, checked after every step):
        it stops at the step it happened, which the message names. ``wall_time`` excludes
        compiling the kernel (``transformer.warm_up``).
    """
    instance("model", model, DataModel)
    steps, batch_size = positive_int("steps", steps), positive_int("batch_size", batch_size)
    record_every = positive_int("record_every", record_every)
    lr, seed = positive_real("lr", lr), nonnegative_int("seed", seed)
    init_scale = real("init_scale", init_scale, low=0.0)
    choice("embeddings", embeddings, EMBEDDINGS)
    d = check_width(model, d)
    meta = {"version": CHECKPOINT_VERSION, "model": model.to_dict(), "lr": float(lr),
            "batch_size": int(batch_size), "d": d, "seed": int(seed), "init_scale": float(init_scale),
            "record_every": int(record_every), "embeddings": embeddings, "steps": int(steps)}
    check_training_memory(model, d, batch_size, steps, record_every)
    _warm_up(model)                  # compile or load the kernels before the clock starts
    start = time.perf_counter()
    run = _fresh(model, d, embeddings, seed, init_scale) if resume is None else _resumed(resume, meta, record_every)
    if run.step == 0:
        B0, A0 = scores(run.Q, run.E, run.V)
        span, why = _out_of_range(A0, B0, _largest_amplitude(model))
        if why is not None:
            raise InvalidInputError(f"init_scale={init_scale:g} starts the run with attention scores of "
                                    f"{span:.3g}, beyond {LOG_WEIGHT_LIMIT:g}: it would diverge at step 0; "
                                    f"lower init_scale")

    def save():
        if checkpoint is not None:
            save_checkpoint(checkpoint, Q=run.Q, E=run.E, V=run.V, step=run.step, acc=run.acc, n_acc=run.n_acc,
                            meta=meta, rng=run.rng, records=run.records)

    if run.step == 0 and not run.records["t"]:
        _record(run, model, lr, np.nan)
        save()
    status, message = _train(run, model, steps, lr, batch_size, record_every, progress, save)
    if status < 0:
        warnings.warn(f"gradflow.train_transformer: {message}", RuntimeWarning, stacklevel=2)
    rec = run.records
    return TrainRun(t=np.array(rec["t"]), step=np.array(rec["step"]), A=np.array(rec["A"]),
                    B=np.array(rec["B"]), loss=np.array(rec["loss"]), target_attention=np.array(rec["att"]),
                    Q=run.Q, E=run.E, V=run.V, model=model, seed=int(seed), steps=int(steps), lr=float(lr),
                    batch_size=int(batch_size), d=d, embeddings=embeddings, init_scale=float(init_scale),
                    record_every=int(record_every), wall_time=time.perf_counter() - start,
                    status=status, message=message, meta=meta)


def _diverged(run: _Progress, why: str, lr: float, step: int) -> str:
    return (f"diverged at step {step}: {why}; lower lr (now {lr:g}); the records stop at step "
            f"{run.records['step'][-1]}")


def _train(run: _Progress, model, steps, lr, batch_size, record_every, progress, save) -> tuple[int, str]:
    """SGD steps until ``steps``; (status, message)."""
    sampler = BatchSampler(model)
    z_max = _largest_amplitude(model)
    bar = _progress_bar(progress, steps, run.step)
    try:
        while run.step < steps:
            B, A = scores(run.Q, run.E, run.V)
            why = _out_of_range(A, B, z_max)[1]          # the state after step run.step
            if why is not None:
                return -1, _diverged(run, why, lr, run.step)
            fq, z, vis = sampler.sample(run.rng, batch_size)
            loss, dQ = batch_loss_grad(run.Q, run.E, run.V, fq, z, vis, score_matrices=(B, A))
            if not (np.isfinite(loss) and np.all(np.isfinite(dQ))):
                return -1, _diverged(run, f"the batch loss is {loss!r}", lr, run.step + 1)
            run.Q -= lr * dQ
            run.step += 1
            run.acc += loss
            run.n_acc += 1
            if bar is not None:
                bar.update(1)
            on_grid = run.step % record_every == 0
            if on_grid or run.step == steps:
                why = _record(run, model, lr, run.acc / run.n_acc)
                if why is not None:
                    return -1, _diverged(run, why, lr, run.step)
                if on_grid:     # an off-grid final record keeps its interval open for a resume
                    run.acc, run.n_acc = 0.0, 0
                save()
    finally:
        if bar is not None:
            bar.close()
    return 0, "finished"
