"""Checkpoints of a training run: the whole state, written atomically, resumed bit-identically."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from ..io import atomic_path

CHECKPOINT_VERSION = 1
RECORDS = ("t", "step", "A", "B", "loss", "att")


def save_checkpoint(path, *, Q, E, V, step, acc, n_acc, meta, rng, records) -> None:
    """Write everything a resume needs (matrices, counters, records, the generator's state)."""
    with atomic_path(path, "checkpoint") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, Q=Q, E=E, V=V, step=np.int64(step), acc=np.float64(acc), n_acc=np.int64(n_acc),
                 meta=np.array(json.dumps(meta)), rng=np.array(json.dumps(rng.bit_generator.state)),
                 **{f"rec_{key}": np.asarray(val) for key, val in records.items()})


def load_checkpoint(path, meta: dict) -> dict:
    """The checkpoint's arrays, after checking it was made with the same ``meta`` (``steps``
    may grow); ``rng_state`` holds the generator's state."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            ck = {key: data[key] for key in data.files}
        saved = json.loads(str(ck["meta"]))
        rng_state = json.loads(str(ck["rng"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise FileFormatError(f"resume checkpoint {str(path)!r} is not a readable gradflow checkpoint: {exc}") from None
    if saved.get("version") != CHECKPOINT_VERSION:
        raise FileFormatError(f"resume checkpoint {str(path)!r} has version {saved.get('version')!r}, "
                              f"expected {CHECKPOINT_VERSION}")
    for key, value in meta.items():
        if key != "steps" and saved.get(key) != value:
            raise FileFormatError(f"resume checkpoint {str(path)!r} was made with {key}={saved.get(key)!r}, "
                                  f"not {value!r}")
    if int(ck["step"]) > meta["steps"]:
        raise FileFormatError(f"resume checkpoint {str(path)!r} is at step {int(ck['step'])}, "
                              f"beyond steps={meta['steps']}")
    ck["rng_state"] = rng_state
    return ck
