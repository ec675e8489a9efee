"""The Dask cluster gradflow starts when a caller gives no client: one single-threaded worker
process per CPU this process may use, each with one Numba (and BLAS) thread, so that workers do
not compete for cores with threads of their own (see ``gradflow.theory.parallel``)."""
from __future__ import annotations

from contextlib import contextmanager

from ..theory.parallel import available_cpus

ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


@contextmanager
def local_client(n_workers: int | None = None):
    """A ``dask.distributed`` Client on a fresh LocalCluster, closed on exit."""
    from dask.distributed import Client, LocalCluster
    n = available_cpus() if n_workers is None else max(1, int(n_workers))
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
