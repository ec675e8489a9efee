"""Compile the flow's kernels before a first run needs them, on a second core.

Numba compiles on one core, and compilation was most of a cold ``python -m gradflow`` (13.6 s end
to end, 9.4 s of it in the solve, on 2 cores). A flow needs two kernel paths: the gradient
(``loss_gradient_and_masses``, every step of the integrator) and the attention by area at the
output times (``attention_by_area``, for the phases). On a cold cache the command line starts a
child process that compiles the attention path into Numba's on-disk cache (``start``) and goes
on at once: it checks its input, and compiles the gradient path itself when it first solves.
Before the attention kernels are first called, ``population.attention_by_area`` waits for the
child (``wait_for``: at most ``WAIT_LIMIT`` seconds, then the child is stopped and the path is
compiled where it is used, as without a child) and loads what it cached. The command stops a
child still running when it ends; killed, it takes the child with it (Linux: the child asks for a
signal when its parent dies). With one usable CPU, or when no process can be started,
nothing changes. A library call never starts a process: only the command line asks for this.

The child runs ``theory.precompile`` (``python -m gradflow.theory.precompile PATH ...`` compiles
the named paths in this process); this module only manages it, and imports nothing that calls
the kernels (``population`` waits here).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .parallel import available_cpus

WAIT_LIMIT = 120.0        # seconds a kernel call waits for a child (a compile takes ~8 s on 2 cores)
_children: dict = {}      # path -> the process compiling it


def start(paths=("attention",)) -> None:
    """Start a child process compiling each of ``paths`` while CPUs beyond this one allow; returns
    at once. Nothing is started with one usable CPU or where no process can be started."""
    spare = available_cpus() - 1 - len(_children)
    # the child imports this gradflow: appended, so that an installed one is found as usual; it
    # first asks to end with this process (a SIGTERM or kill of the command skips its cleanup)
    code = ("import sys; sys.path.append({!r}); from gradflow.theory.warmup import end_with_parent; "
            "end_with_parent({}); from gradflow.theory.precompile import compile_path; "
            "[compile_path(p) for p in sys.argv[1:]]").format(
                str(Path(__file__).resolve().parents[2]), os.getpid())
    for name in paths:
        if spare <= 0 or name in _children:
            continue
        try:
            _children[name] = subprocess.Popen([sys.executable, "-c", code, name], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            spare -= 1
        except OSError:
            return


def end_with_parent(parent: int) -> None:
    """In a child: be sent SIGTERM when the process that started it ends, however it ends
    (Linux; elsewhere the parent's own cleanup, ``stop_all``, is all there is). Exits at once
    if that process has ended already."""
    try:
        import ctypes
        import signal
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        sys.exit(0)


def wait_for(name: str, limit: float | None = None) -> None:
    """Wait for the child compiling ``name``, if any (at most ``limit`` seconds, default
    WAIT_LIMIT; a child still running then is stopped)."""
    child = _children.pop(name, None)
    if child is None:
        return
    try:
        child.wait(timeout=WAIT_LIMIT if limit is None else limit)
    except subprocess.TimeoutExpired:
        pass
    finally:
        _stop(child)


def stop_all() -> None:
    """Stop every child still compiling (their cache writes are atomic: nothing is left half-done)."""
    while _children:
        _stop(_children.popitem()[1])


def _stop(child) -> None:
    if child.poll() is None:
        child.kill()
        child.wait()
