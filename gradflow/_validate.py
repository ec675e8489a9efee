"""One set of validation helpers: each returns the cleaned value or raises InvalidInputError
naming the field and the offending value."""
from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable

import numpy as np

from .errors import InvalidInputError


def fmt(value) -> str:
    """Short repr of an offending value for error messages."""
    text = repr(value.tolist() if isinstance(value, np.ndarray) and value.size <= 20 else value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_int(value) -> bool:
    """A true integer (bool excluded: True is not a count)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """A real number (bool and complex excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value) -> int:
    if not is_int(value) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {fmt(value)}")
    return int(value)


def nonnegative_int(name: str, value) -> int:
    if not is_int(value) or value < 0:
        raise InvalidInputError(f"{name} must be a non-negative integer, got {fmt(value)}")
    return int(value)


def real(name: str, value, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number within optional bounds (open or closed)."""
    if not is_real(value) or not np.isfinite(float(value)):
        raise InvalidInputError(f"{name} must be a finite real number, got {fmt(value)}")
    x = float(value)
    bad_low = low is not None and (x <= low if low_open else x < low)
    bad_high = high is not None and (x >= high if high_open else x > high)
    if bad_low or bad_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = (f"in {lo}, {hi}" if low is not None and high is not None
                 else (f"{'>' if low_open else '>='} {low:g}" if low is not None
                       else f"{'<' if high_open else '<='} {high:g}"))
        raise InvalidInputError(f"{name} must be {where}, got {fmt(value)}")
    return x


def positive_real(name: str, value) -> float:
    return real(name, value, low=0.0, low_open=True)


def choice(name: str, value, options: Iterable):
    """One of ``options``; the message lists them and suggests the nearest."""
    options = list(options)
    if isinstance(value, str) and value in options:
        return value
    raise InvalidInputError(f"{name} must be one of {options}, got {fmt(value)}{suggest(value, options)}")


def suggest(word, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the nearest known word, or ''."""
    if not isinstance(word, str):
        return ""
    known = [str(k) for k in known]
    near = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if not near:       # a shortened or lengthened key: 'probability' for 'prob', 'amp' for 'amplitudes'
        near = [k for k in known if len(k) >= 3 and len(word) >= 3 and (k.startswith(word) or word.startswith(k))]
    return f" (did you mean {near[0]!r}?)" if near else ""


def real_array(name: str, value, shape: tuple | None = None, *, finite: bool = True) -> np.ndarray:
    """A float64 array: complex, boolean, object or string input is refused, not coerced."""
    try:
        arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
    except (TypeError, ValueError):            # ragged nesting and the like
        raise InvalidInputError(f"{name} must be a real numeric array"
                                + (f" of shape {shape}" if shape else "") + f", got {fmt(value)}") from None
    if arr.dtype.kind == "c":
        raise InvalidInputError(f"{name} must be real, got a complex array")
    if arr.dtype.kind not in "iuf":
        raise InvalidInputError(f"{name} must be a real numeric array"
                                + (f" of shape {shape}" if shape else "") + f", got {fmt(value)}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if shape is not None and arr.shape != tuple(shape):
        raise InvalidInputError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[:3].tolist()
        raise InvalidInputError(f"{name} must be finite, got non-finite entries at {bad}")
    return arr


def instance(name: str, value, cls):
    if not isinstance(value, cls):
        raise InvalidInputError(f"{name} must be a {cls.__name__}, got {type(value).__name__}")
    return value


def available_memory() -> int:
    """Bytes this process may use: physical memory, capped by its cgroup limit."""
    import os
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 1 << 62
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
            if text.isdigit():
                total = min(total, int(text))
        except OSError:
            continue
    return total


def check_memory(n_numbers: float, what: str) -> None:
    """Refuse, before allocating, an array of ``n_numbers`` float64 that cannot fit in memory."""
    need = 8.0 * float(n_numbers)
    have = available_memory()
    if need > 0.8 * have:
        raise InvalidInputError(f"{what} would need {need / 2**30:.1f} GiB of memory, more than this machine "
                                f"offers ({have / 2**30:.1f} GiB)")
