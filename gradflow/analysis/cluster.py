"""The Dask cluster gradflow starts when a caller gives no client: one single-threaded worker
process per CPU this process may use, each with one Numba (and BLAS) thread, so that workers do
not compete for cores with threads of their own (see ``gradflow.theory.parallel``).

The thread counts must be in the environment *before* a worker process starts: a worker imports
gradflow, and so Numba, before the variables of ``LocalCluster(env=...)`` are set, and Numba's
pool then had one thread per core in every worker (two workers on two cores ran four threads and
were no faster than one). Dask sets ``distributed.nanny.pre-spawn-environ`` in this process's own
environment before it spawns a worker; ``local_client`` puts the variables there for the
cluster's start and restores this process's environment after.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

from ..theory.parallel import available_cpus

ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


@contextmanager
def _spawned_with(variables: dict):
    """Worker processes spawned inside the block start with ``variables`` in their environment;
    this process's own environment is as before after it."""
    import dask
    saved = {k: os.environ.get(k) for k in variables}
    spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ", default={}), **variables}
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def local_client(n_workers: int | None = None):
    """A ``dask.distributed`` Client on a fresh LocalCluster, closed on exit."""
    from dask.distributed import Client, LocalCluster
    n = available_cpus() if n_workers is None else max(1, int(n_workers))
    with _spawned_with(ONE_THREAD):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               env=dict(ONE_THREAD))
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@contextmanager
def given_or_local_client(client, n_workers: int | None = None):
    """``client`` itself, or a local one for the duration (when ``client`` is None)."""
    if client is not None:
        yield client
        return
    with local_client(n_workers) as own:
        yield own
