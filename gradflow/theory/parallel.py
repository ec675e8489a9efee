"""How many threads a kernel call gets: by its work, and by the CPUs this process may use.

Numba's parallel kernels would otherwise use one thread per core of the machine. On a machine
shared with other work that is slow (threads wait on busy cores: a 0.03 s solve took 8 s beside
one busy process), and for small reduced models it never pays. So a call runs single-threaded
below its kernel's threshold of work and otherwise on the CPUs the process may use: its affinity
mask (read at every call: it can change while the process runs) and the CPU quota of its own
cgroup and the cgroups above it (``_validate.cgroup_cpu_quota``; re-read every
``QUOTA_RECHECK`` seconds), not the machine's count. Dask workers are started with one thread
each. The population kernels (``kernel_threads``) and the Monte-Carlo training kernel
(``kernel_threads_for``) follow the same policy.

Numba's threading layers are not all safe to enter from several threads at once (the
``workqueue`` layer, the one left where neither TBB nor OpenMP is found, aborts the process on
a concurrent launch; two OpenMP runtimes in one process, Numba's and PyTorch's, have crashed
it). A process may well call the kernels from several threads: a Dask client with threaded
workers, the ladder training PyTorch rungs on threads. So every parallel kernel call holds one
process-wide lock while it runs: calls from other threads wait (each call uses every usable
CPU anyway) and the rest of their work, PyTorch's included, goes on beside it.
"""
from __future__ import annotations

import math
import os
import threading
import time
from contextlib import contextmanager

import numba

from .._validate import cgroup_cpu_quota

# work units (query classes x key classes x clusters x mean atoms) below which one thread wins:
# the threads' start-up (~10-50 us) costs more than they save (measured: gradflow bench)
PARALLEL_WORK = 4096
QUOTA_RECHECK = 2.0        # seconds a read cgroup quota is trusted (a read costs ~0.1 ms)

_quota_cache = {"at": -math.inf, "quota": math.inf}
_LAUNCH = threading.RLock()       # held by every parallel kernel call (see the module's text)
_CAP = threading.local()          # this thread's cap on kernel threads (``at_most_threads``)


def _cgroup_cpus() -> float:
    """The CPU quota of this process's cgroups, inf when unlimited; re-read when older than
    QUOTA_RECHECK seconds."""
    now = time.monotonic()
    if now - _quota_cache["at"] > QUOTA_RECHECK:
        _quota_cache.update(at=now, quota=cgroup_cpu_quota())
    return _quota_cache["quota"]


def available_cpus() -> int:
    """CPUs this process may use now: its affinity mask, capped by its cgroups' quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if math.isfinite(quota):
        n = min(n, max(1, int(quota)))
    return max(1, n)


def threads_for_work(work: float, threshold: float) -> int:
    """Threads for a kernel call of ``work`` units: 1 below ``threshold`` (the kernel's own
    break-even), else the usable CPUs."""
    if work < threshold:
        return 1
    return max(1, min(available_cpus(), numba.config.NUMBA_NUM_THREADS, getattr(_CAP, "n", math.inf)))


@contextmanager
def at_most_threads(n: int):
    """Kernel calls of this thread use at most ``n`` threads inside the block (timings of one
    core, a worker sharing its machine); the policy above still decides below that."""
    before = getattr(_CAP, "n", math.inf)
    _CAP.n = max(1, int(n))
    try:
        yield
    finally:
        _CAP.n = before


@contextmanager
def kernel_threads_for(work: float, threshold: float):
    """Hold the kernels' lock and set the calling thread's Numba thread count for a call of
    ``work`` units; yields that count. Use as ``with kernel_threads_for(w, t) as n: kernel(...)``."""
    with _LAUNCH:
        n = threads_for_work(work, threshold)
        numba.set_num_threads(n)
        yield n


def kernel_work(reduction) -> float:
    """Work units of one kernel call on ``reduction`` (see PARALLEL_WORK)."""
    S, K = reduction.n_classes, reduction.n_clusters
    return float(S) * S * K * float(reduction.n_atoms.mean())


def threads_for(reduction, times: int = 1) -> int:
    """Threads for a kernel call on ``reduction`` (at ``times`` states at once): 1 for small
    work, else the usable CPUs."""
    return threads_for_work(times * kernel_work(reduction), PARALLEL_WORK)


def kernel_threads(reduction, times: int = 1):
    """``kernel_threads_for`` a kernel call on ``reduction`` (at ``times`` states at once)."""
    return kernel_threads_for(times * kernel_work(reduction), PARALLEL_WORK)
