"""How many threads a kernel call gets: by its work, and by the CPUs this process may use.

Numba's parallel kernels would otherwise use one thread per core of the machine. On a machine
shared with other work that is slow (threads wait on busy cores: a 0.03 s solve took 8 s beside
one busy process), and for small reduced models it never pays. So a call runs single-threaded
below ``PARALLEL_WORK`` and otherwise on the CPUs the process may use: its affinity mask and its
cgroup quota, not the machine's count. Dask workers are started with one thread each.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache

import numba

# work units (query classes x key classes x clusters x mean atoms) below which one thread wins:
# the threads' start-up (~10-50 us) costs more than they save (measured: gradflow bench)
PARALLEL_WORK = 4096


def _cgroup_cpus() -> float:
    """The CPU quota of this process's cgroup (v2 cpu.max or v1 cfs), inf when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:
            quota, period = fh.read().split()[:2]
        return math.inf if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as fh:
            quota = int(fh.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as fh:
            period = int(fh.read())
        return math.inf if quota <= 0 else quota / period
    except (OSError, ValueError):
        return math.inf


@lru_cache(maxsize=1)
def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if math.isfinite(quota):
        n = min(n, max(1, int(quota)))
    return max(1, n)


def kernel_work(reduction) -> float:
    """Work units of one kernel call on ``reduction`` (see PARALLEL_WORK)."""
    S, K = reduction.n_classes, reduction.n_clusters
    return float(S) * S * K * float(reduction.n_atoms.mean())


def threads_for(reduction, times: int = 1) -> int:
    """Threads for a kernel call on ``reduction`` (at ``times`` states at once): 1 for small
    work, else the usable CPUs."""
    if times * kernel_work(reduction) < PARALLEL_WORK:
        return 1
    return max(1, min(available_cpus(), numba.config.NUMBA_NUM_THREADS))


def use_threads(reduction, times: int = 1) -> None:
    """Set the calling thread's Numba thread count for a kernel call on ``reduction``."""
    numba.set_num_threads(threads_for(reduction, times))
