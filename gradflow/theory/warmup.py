"""Compile the flow's kernels before a first run, on two cores at once.

Numba compiles on one core, and compilation was most of a cold ``python -m gradflow`` (13.6 s end
to end, 9.4 s of it in the solve, on 2 cores). A flow needs two kernel paths: the gradient
(``loss_gradient_and_masses``, every step of the integrator) and the attention by area at the
output times (``attention_by_area``, for the phases); each compiles the per-query helpers they
share again, which costs less than waiting for the other. On a cold cache the
command line compiles the gradient path in its own process while a child process compiles the
attention path; both write Numba's on-disk cache, and once the child is done the command runs
with both paths cached. With one usable CPU, or when the child cannot start, each path is compiled
where it is first used, as before. A library call never starts a process: only the command line
asks for this (``compile_flow_kernels``).

``python -m gradflow.theory.warmup PATH ...`` compiles the named paths in this process.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..model import Cluster, DataModel
from .parallel import available_cpus
from .reduction import signature_reduction
from .state import State

PATHS = ("gradient", "attention")


def _small_state(stacked: bool) -> State:
    """A zero state of a small model: every kernel argument has the types of any model's."""
    model = DataModel(grid=(2, 3), clusters=[Cluster(np.array([0, 0, 1, 1, 1, 2]))], mask_ratio=0.5)
    reduction = signature_reduction(model)
    S, F = reduction.n_classes, reduction.n_features
    lead = (1,) if stacked else ()
    return State(reduction, np.zeros(lead + (S, F)), np.zeros(lead + (S, S)), np.zeros(lead + (S,)))


def compile_path(name: str) -> None:
    """Compile (or load from the cache) the kernels of one path, by calling them once."""
    from . import population
    if name == "gradient":
        population.loss_gradient_and_masses(_small_state(False))
    elif name == "attention":
        population.attention_by_area(_small_state(True))
    else:
        raise ValueError(f"path must be one of {PATHS}, got {name!r}")


def compile_flow_kernels(paths=PATHS) -> None:
    """Compile ``paths``: the first here and each other one at the same time in a child process
    while CPUs allow; returns when every path is compiled (and cached)."""
    paths = list(paths)
    children = []
    spare = available_cpus() - 1
    package_parent = str(Path(__file__).resolve().parents[2])     # the child imports this gradflow
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")])))
    for name in paths[1:]:
        if len(children) >= spare:
            break
        try:
            children.append((name, subprocess.Popen([sys.executable, "-m", "gradflow.theory.warmup", name],
                                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL, env=env)))
        except OSError:          # no process can be started here: compile where first used
            break
    started = {name for name, _ in children}
    try:
        for name in paths:
            if name not in started:
                compile_path(name)
        for _, child in children:
            child.wait()
    finally:
        for _, child in children:            # interrupted: a child's cache writes are atomic
            if child.poll() is None:
                child.kill()
                child.wait()


if __name__ == "__main__":
    for path in sys.argv[1:]:
        compile_path(path)
