"""Keep Numba's on-disk cache from serving machine code compiled from older sources.

Numba checks a cached function only against the file it is defined in. The exact kernels
compile in code from four other files (SymPy's ``_generated``, ``quadrature`` and its tables
``_quadrature_rules``, ``vector_math``), and ``analysis.bench`` compiles in the kernels: after one of those files
changes (``derivations/generate.py`` rewrites ``_generated.py``; any edit), the cache would go
on returning the old numbers, silently (measured: a changed pair layout in ``kernels.py`` left
``bench.count_pair_evaluations`` counting the old one). ``refresh`` stores a digest of every
source a module compiles in beside its cache and drops the module's cached code when the
digest differs, so it is compiled again from what is on disk.

An installed package whose cache directory cannot be written is left alone (its files do not
change in place; reinstalling changes every file's stamp, which Numba does see).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def source_digest(paths) -> str:
    """SHA-256 over the contents of ``paths``, in order."""
    h = hashlib.sha256()
    for path in paths:
        h.update(Path(path).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def refresh(module_globals: dict, sources) -> bool:
    """Drop the cached machine code of the module whose ``globals()`` these are when one of
    ``sources`` (the files it compiles in, itself included) changed since it was cached.

    Call it at the end of the module, before any of its functions has run (Numba reads the
    cache at a function's first call). Returns True when cached code was dropped.
    """
    name = module_globals["__name__"]
    dispatchers = [v for v in module_globals.values()
                   if hasattr(v, "py_func") and getattr(v.py_func, "__module__", None) == name and hasattr(v, "_cache")]
    try:
        cache_dir = Path(dispatchers[0]._cache._cache_path)
    except (IndexError, AttributeError):        # nothing cached, or another Numba's internals
        return False
    stem = name.rsplit(".", 1)[-1]
    stamp = cache_dir / f"{stem}.sources.sha256"
    digest = source_digest(sources)
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass                                    # no stamp yet: code cached before it may be stale
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for path in cache_dir.glob(f"{stem}.*.nb[ic]"):
            path.unlink(missing_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(digest)
        os.replace(tmp, stamp)
    except OSError:                             # a read-only installation: see the module's text
        return False
    return True
