"""How many threads a kernel call gets, and the threads it runs on.

The population kernels and the Monte-Carlo training kernel are serial Numba functions over a set
of rows (query classes, (time, class) pairs, chunks of a batch) that release the GIL
(``nogil=True``); ``run_rows`` splits the rows of a call over threads of one pool. That is
Numba's ``prange`` without its costs: the kernels compile in a fraction of the time (the parallel
lowering of the two main kernels was about a third of a first run's compilation: a cold
``python -m gradflow`` took 22.3 s with it, 13.1 s without), and no
Numba threading layer is involved, so calls from many threads at once are safe whatever layer
Numba would have picked (its ``workqueue`` layer aborts the process on a concurrent launch, and
two OpenMP runtimes in one process, Numba's and PyTorch's, have crashed it).

How many threads: a parallel call would otherwise use one thread per core of the machine. On a
machine shared with other work that is slow (threads wait on busy cores: a 0.03 s solve took 8 s
beside one busy process), and for small reduced models it never pays. So a call runs on the
calling thread alone below its kernel's threshold of work and otherwise on the CPUs the process
may use: its affinity mask (read at every call: it can change while the process runs) and the CPU
quota of its own cgroup and the cgroups above it (``_validate.cgroup_cpu_quota``; re-read every
``QUOTA_RECHECK`` seconds), not the machine's count; ``NUMBA_NUM_THREADS`` caps it as it capped
Numba's pool (Dask workers are started with one thread each), and ``at_most_threads`` caps the
calls of one thread.
"""
from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numba
import numpy as np

from .._validate import cgroup_cpu_quota

# work units (query classes x key classes x clusters x mean atoms) below which one thread wins:
# the threads' start-up (~10-50 us) costs more than they save (measured: gradflow bench)
PARALLEL_WORK = 4096
QUOTA_RECHECK = 2.0        # seconds a read cgroup quota is trusted (a read costs ~0.1 ms)

_quota_cache = {"at": -math.inf, "quota": math.inf}
PARTS_PER_THREAD = 4       # rows are dealt in this many parts per thread: a thread that finishes
                           # its part early takes the next (query classes differ in cost)
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


class _Pool:
    """One process-wide pool of threads for ``run_rows``, started on first use and again in a
    forked child (a fork copies the pool's bookkeeping, not its threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.executor, self.pid = None, None

    def get(self) -> ThreadPoolExecutor:
        with self.lock:
            if self.executor is None or self.pid != os.getpid():
                self.executor = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1),
                                                   thread_name_prefix="gradflow-kernel")
                self.pid = os.getpid()
            return self.executor


_POOL = _Pool()


def run_rows(call, n_rows: int, threads: int) -> None:
    """Call ``call(rows)`` on disjoint int64 arrays of rows that together cover ``range(n_rows)``,
    on up to ``threads`` threads (the calling thread is one of them).

    ``call`` must only write the outputs of its own rows (then the result does not depend on the
    split) and should spend its time in a kernel that releases the GIL. Rows are dealt round-robin
    into ``PARTS_PER_THREAD`` parts per thread, which the threads take in turn as they finish.
    When a part fails (or the caller is interrupted), no thread starts another part, and the first
    failure is raised. Where the pool takes no more work (the interpreter is shutting down), every
    part runs on the calling thread.
    """
    if threads <= 1 or n_rows <= 1:
        call(np.arange(n_rows, dtype=np.int64))
        return
    n_parts = min(n_rows, threads * PARTS_PER_THREAD)
    parts = iter([np.arange(j, n_rows, n_parts, dtype=np.int64) for j in range(n_parts)])
    take = threading.Lock()
    failures = []                  # the first failure stops every thread at its next part

    def work():
        while True:
            with take:
                part = None if failures else next(parts, None)
            if part is None:
                return
            try:
                call(part)
            except BaseException as exc:
                with take:
                    failures.append(exc)
                raise

    helpers = []
    try:
        executor = _POOL.get()
        for _ in range(min(threads, n_parts) - 1):
            helpers.append(executor.submit(work))
    except RuntimeError:           # "cannot schedule new futures after shutdown": the caller does it all
        pass
    try:
        work()
    finally:
        # helpers the pool has not started (it is busy, e.g. with the calls of other threads) are
        # not waited for: the parts are done, and waiting could deadlock a call made from the pool
        for h in helpers:
            if not h.cancel():
                try:
                    h.result()
                except BaseException:      # already in ``failures``
                    pass
    if failures:
        raise failures[0]


def kernel_work(reduction) -> float:
    """Work units of one kernel call on ``reduction`` (see PARALLEL_WORK)."""
    S, K = reduction.n_classes, reduction.n_clusters
    return float(S) * S * K * float(reduction.n_atoms.mean())


def threads_for(reduction, times: int = 1) -> int:
    """Threads for a kernel call on ``reduction`` (at ``times`` states at once): 1 for small
    work, else the usable CPUs."""
    return threads_for_work(times * kernel_work(reduction), PARALLEL_WORK)
