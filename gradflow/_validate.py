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
    """``value`` itself when it is a ``cls`` (a class or a tuple of classes)."""
    if not isinstance(value, cls):
        names = " or ".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise InvalidInputError(f"{name} must be a {names}, got {type(value).__name__} {fmt(value)}")
    return value


def trajectory(name: str, value):
    """A Solution or TrainRun: anything with output times ``t`` and a ``model`` (checked by
    these attributes, so that the low layers need not import the result classes)."""
    if not (hasattr(value, "t") and hasattr(value, "model")):
        raise InvalidInputError(f"{name} must be a Solution or TrainRun, got {type(value).__name__} {fmt(value)}")
    return value


def check_names(where: str, names: Iterable, known: Iterable, *, noun: str = "key",
                error: type = InvalidInputError) -> None:
    """Refuse any of ``names`` outside ``known``, naming it and the nearest known one."""
    known = list(known)
    for name in names:
        if name not in known:
            raise error(f"{where}: unknown {noun} {name!r}{suggest(name, known)}; known {noun}s: {known}")


def first_descent(values: np.ndarray) -> str | None:
    """Where a 1-d array first fails to increase strictly ('got 5.0 then 2.0 at entries 1, 2'),
    or None when it increases strictly."""
    down = np.flatnonzero(np.diff(values) <= 0)
    if not down.size:
        return None
    i = int(down[0])
    return f"got {values[i].item()!r} then {values[i + 1].item()!r} at entries {i}, {i + 1}"


MAX_TIMES = 1_000_000      # output times of one run: each costs an observable evaluation


def increasing_times(name: str, value, *, low: float = 0.0, high: float | None = None,
                     max_size: int = MAX_TIMES) -> np.ndarray:
    """A non-empty 1-d float64 array of finite, strictly increasing times in [low, high], at
    most ``max_size`` of them (counted before converting: a huge list is refused, not copied).
    Strings, booleans and complex numbers are refused (``real_array``)."""
    try:
        size = len(value)
    except TypeError:
        size = None
    if size is not None and size > max_size:
        raise InvalidInputError(f"{name} must hold at most {max_size:,} times, got {size:,}")
    arr = real_array(name, value)
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidInputError(f"{name} must be a non-empty 1-d sequence of times, got shape {arr.shape}")
    if arr.size > max_size:
        raise InvalidInputError(f"{name} must hold at most {max_size:,} times, got {arr.size:,}")
    descent = first_descent(arr)
    if descent:
        raise InvalidInputError(f"{name} must be strictly increasing, {descent}")
    if arr[0] < low or (high is not None and arr[-1] > high):
        span = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise InvalidInputError(f"{name} must lie in {span}, got {arr[0].item()!r} .. {arr[-1].item()!r}")
    return arr


# ---- resources: what this process may use ------------------------------------------------------
PROC_SELF = "/proc/self"
# where the cgroup file systems usually are, when /proc/self/mountinfo cannot be read:
# (type, root of the mount within its hierarchy, mount point, controllers)
DEFAULT_CGROUP_MOUNTS = (("cgroup2", "/", "/sys/fs/cgroup", ()),
                         ("cgroup", "/", "/sys/fs/cgroup/cpu,cpuacct", ("cpu", "cpuacct")),
                         ("cgroup", "/", "/sys/fs/cgroup/cpu", ("cpu",)),
                         ("cgroup", "/", "/sys/fs/cgroup/memory", ("memory",)))


def _read(path) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:            # absent, unreadable, or not a file
        return None


def _cgroup_mounts(proc: str) -> list:
    """(type, root, mount point, controllers) of every cgroup file system mounted here."""
    text = _read(f"{proc}/mountinfo")
    if text is None:
        return list(DEFAULT_CGROUP_MOUNTS)
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) >= 5 and len(tail) >= 3 and tail[0] in ("cgroup", "cgroup2"):
            mounts.append((tail[0], fields[3], fields[4], tuple(tail[2].split(","))))
    return mounts


def cgroup_dirs(controller: str, proc: str = PROC_SELF) -> list:
    """The cgroup directories whose ``controller`` ("cpu", "memory") limits bind this process:
    its own cgroup (from ``/proc/self/cgroup``) and every ancestor up to its mount's root, own
    first; for cgroup v1 the hierarchy that carries the controller, for v2 the unified one."""
    import os
    text = _read(f"{proc}/cgroup")
    if text is None:
        return []
    mounts = _cgroup_mounts(proc)
    dirs = []
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        unified = hierarchy == "0" and controllers == ""
        for kind, root, point, options in mounts:
            if unified != (kind == "cgroup2") or (not unified and controller not in controllers.split(",")) \
                    or (not unified and controller not in options):
                continue
            # the path is relative to the hierarchy's root; the mount shows it from ``root`` down
            try:
                rel = os.path.relpath(path, root) if os.path.commonpath([path, root]) == root else "."
            except ValueError:                 # not both absolute: not a path of this mount
                rel = "."
            here = os.path.normpath(os.path.join(point, rel))
            if not os.path.isdir(here):        # a path of another namespace: the mount's own
                here = point
            while True:
                if here not in dirs:
                    dirs.append(here)
                if os.path.normpath(here) == os.path.normpath(point):
                    break
                here = os.path.dirname(here)
    return dirs


def _number_in(text: str | None):
    """The integer a cgroup file holds, None for "max", absent or unreadable."""
    if text is None:
        return None
    word = text.split()[0] if text.split() else ""
    return int(word) if word.lstrip("-").isdigit() else None


def _stat_value(text: str | None, *keys: str) -> int:
    """A value of a memory.stat file (the first of ``keys`` present), 0 when absent."""
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name in keys and value.strip().isdigit():
            return int(value)
    return 0


def cgroup_memory_available(proc: str = PROC_SELF) -> float:
    """Bytes this process's cgroups still allow: over its cgroup and every ancestor, the
    smallest limit minus what the cgroup uses (its reclaimable inactive file cache aside);
    inf when no cgroup limits memory. v2 memory.max / memory.current, v1 memory.limit_in_bytes
    / memory.usage_in_bytes."""
    import os
    room = float("inf")
    for d in cgroup_dirs("memory", proc):
        for limit_file, usage_file, cache_keys in (("memory.max", "memory.current", ("inactive_file",)),
                                                   ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                    ("total_inactive_file", "inactive_file"))):
            limit = _number_in(_read(os.path.join(d, limit_file)))
            if limit is None or limit >= 1 << 62:         # "max", absent, or v1's "unlimited"
                continue
            used = _number_in(_read(os.path.join(d, usage_file))) or 0
            used -= _stat_value(_read(os.path.join(d, "memory.stat")), *cache_keys)
            room = min(room, float(max(0, limit - max(0, used))))
    return room


def cgroup_cpu_quota(proc: str = PROC_SELF) -> float:
    """CPUs this process's cgroups allow (the smallest quota / period over its cgroup and every
    ancestor: v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us); inf when unlimited."""
    import os
    quota = float("inf")
    for d in cgroup_dirs("cpu", proc):
        words = (_read(os.path.join(d, "cpu.max")) or "").split()
        if len(words) >= 2 and words[0].isdigit() and words[1].isdigit() and int(words[1]) > 0:
            quota = min(quota, int(words[0]) / int(words[1]))
        q = _number_in(_read(os.path.join(d, "cpu.cfs_quota_us")))
        period = _number_in(_read(os.path.join(d, "cpu.cfs_period_us")))
        if q is not None and q > 0 and period:
            quota = min(quota, q / period)
    return quota


def meminfo_available(proc_root: str = "/proc") -> float:
    """MemAvailable of /proc/meminfo in bytes (the memory the kernel can give without swapping),
    physical memory when it cannot be read."""
    import os
    for line in (_read(f"{proc_root}/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return float(int(line.split()[1]) * 1024)
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def available_memory() -> float:
    """Bytes this process can allocate now: the machine's available memory (MemAvailable),
    capped by what its own cgroups still allow."""
    return min(meminfo_available(), cgroup_memory_available())


def size_text(n_bytes: float) -> str:
    """'1.5 GiB', '7450.6 GiB', '12.0 MiB' (GiB from 1 GiB up, so that sizes compare at a glance)."""
    for unit, power in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n_bytes >= 2 ** power:
            return f"{n_bytes / 2 ** power:.1f} {unit}"
    return f"{n_bytes:.0f} B"


MEMORY_SHARE = 0.8      # of the available memory one request may take
SMALL_REQUEST = 16 << 20     # bytes: smaller requests are not worth reading /proc and the cgroups for


def check_memory(n_numbers: float, what: str) -> None:
    """Refuse, before allocating, ``n_numbers`` float64 that cannot fit in the memory available
    now (``available_memory``); the message states the size needed and the size available."""
    need = 8.0 * float(n_numbers)
    if need < SMALL_REQUEST:
        return
    have = available_memory()
    if need > MEMORY_SHARE * have:
        raise InvalidInputError(f"{what} would need {size_text(need)} of memory; this process has "
                                f"{size_text(have)} available")
