"""Safe output files: checked before any work starts, written atomically, nothing around damaged.

* :func:`check_output_path` refuses, before a computation, an output the save would fail on or
  would damage: a missing or read-only directory, a full disk (under DISK_FULL_BYTES free; a disk
  that fills during the work is caught at the write), a directory or FIFO or device in its place, a
  file with other hard links (an atomic rename would silently detach them), a symlink loop.
* :func:`output_dir` makes (or checks) an output directory before the work, refusing a file in
  its place, a parent it cannot write, a symlink loop; every refusal is an ``OutputPathError``.
* :func:`atomic_path` writes to a temporary file beside the target and renames it over the
  target in one step. A symlink is written through (its target is replaced, the link kept), an
  existing file keeps its permissions, and temporary files carry a recognisable name
  (``.NAME.gradflow-PID.tmp``); one left by a killed process is removed by the next save of the
  same target.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputPathError

TMP_TAG = "gradflow-"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _stat(path: Path, what: str, shown: Path):
    """os.stat of ``path`` (following links), None when nothing is there; OutputPathError for a
    symlink loop, a file where a directory should be, or a path that cannot be searched."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputPathError(f"{what} {str(shown)!r}: {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    """What an OSError about a path means for an output."""
    if exc.errno == errno.ELOOP:
        return "a symlink loop (a link that points, in the end, to itself)"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is a file, not a directory"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EROFS:
        return "on a read-only file system"
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    return exc.strerror or str(exc)


def check_output_path(path, what: str = "output") -> Path:
    """The real file a save to ``path`` will write (symlinks followed), or OutputPathError.

    Call it before the work whose result is saved, so that nothing is computed for nothing.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    parent = target.parent
    st_parent = _stat(parent, what, path)
    if st_parent is None or not stat.S_ISDIR(st_parent.st_mode):
        kind = "does not exist" if st_parent is None else "is not a directory"
        raise OutputPathError(f"{what} {str(path)!r}: directory {str(parent)!r} {kind}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {str(path)!r}: directory {str(parent)!r} is not writable")
    usage = _disk_usage(parent)
    if usage is not None and usage.total == 0:
        # no size: /proc and /sys, where no file can be made, but also an unlimited tmpfs or a
        # FUSE file system, where it can: try
        _probe_write(parent, what, path)
    elif usage is not None and usage.free < DISK_FULL_BYTES:   # the work would be done for nothing
        raise OutputPathError(f"{what} {str(path)!r} could not be written: the disk is full ({usage.free} "
                              f"bytes free in {str(parent)!r})")
    st = _stat(target, what, path)
    if st is None:                            # (a dangling symlink: the save creates its target)
        return target
    if stat.S_ISDIR(st.st_mode):
        raise OutputPathError(f"{what} {str(path)!r} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise OutputPathError(f"{what} {str(path)!r} exists and is not a regular file (a FIFO, socket "
                              f"or device): refusing to replace it")
    if st.st_nlink > 1:
        raise OutputPathError(f"{what} {str(path)!r} has {st.st_nlink} hard links: replacing it atomically "
                              f"would detach the others; remove them or choose another name")
    return target


def check_output_paths(paths, what: str = "output") -> list:
    """``check_output_path`` of every one of ``paths``, before any is written."""
    return [check_output_path(p, what) for p in paths]


def output_dir(path, what: str = "output directory") -> Path:
    """Make the directory ``path`` (and its parents) if needed and check it can be written in;
    OutputPathError when a file (or a FIFO, ...) is in its place, a parent cannot be written,
    or the path is a symlink loop. Call it before the work whose results go there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        st = _stat(path, what, path)
        if st is None:                        # a dangling symlink
            raise OutputPathError(f"{what} {str(path)!r} is a symlink to {os.readlink(path)!r}, which does "
                                  f"not exist") from None
        raise OutputPathError(f"{what} {str(path)!r} exists and is not a directory (a file or another kind "
                              f"of entry is in its place): give a directory") from None
    except OSError as exc:
        raise OutputPathError(f"{what} {str(path)!r} cannot be made: {_reason(exc)}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {str(path)!r} is not writable")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> list:
    """Delete temporary files of earlier saves of ``target`` whose process is gone."""
    removed = []
    for tmp in target.parent.glob(f".{target.name}.{TMP_TAG}*.tmp"):
        pid = tmp.name[len(f".{target.name}.{TMP_TAG}"):-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


DISK_FULL_BYTES = 1 << 20       # free space below which a disk counts as full: an output is refused
                                # before the work, and a failed write is put down to it


def _probe_write(directory: Path, what: str, shown: Path) -> None:
    """Make and remove a file in ``directory``; OutputPathError naming why when that fails."""
    probe = directory / f".gradflow-probe-{os.getpid()}.tmp"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"{what} {str(shown)!r}: no file can be made in {str(directory)!r} "
                              f"({_reason(exc)}; a virtual file system such as /proc or /sys?)") from None


def _disk_usage(directory: Path):
    """``shutil.disk_usage`` of ``directory``'s file system, None when it cannot be told."""
    try:
        return shutil.disk_usage(directory)
    except OSError:
        return None


def _disk_full(exc: BaseException, directory: Path):
    """Free bytes in ``directory`` when ``exc`` (a failed write) came from a full disk, else None.

    NetCDF reports a full disk as ``RuntimeError: NetCDF: HDF error``, so besides ENOSPC a failed
    write into a directory with less than DISK_FULL_BYTES free (the partial file removed) counts."""
    if not isinstance(exc, Exception):
        return None
    usage = _disk_usage(directory)
    if usage is None or usage.total == 0:          # no size to be full (an unlimited tmpfs, /proc)
        return None
    free = usage.free
    no_space = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return free if no_space or free < DISK_FULL_BYTES else None


@contextmanager
def atomic_path(path, what: str = "output"):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On any exception (KeyboardInterrupt included) the temporary file is removed and ``path``
    keeps its previous content, if any.
    """
    target = check_output_path(path, what)
    remove_stale_temporaries(target)
    tmp = target.parent / f".{target.name}.{TMP_TAG}{os.getpid()}.tmp"
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)      # keep an existing file's permissions
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.chmod(tmp, mode)
        yield tmp
        with open(tmp, "rb+") as fh:          # the data is on disk before the rename
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        full = _disk_full(exc, target.parent)
        if full is not None:            # the machine's state, not a failure of gradflow: say it plainly
            raise OutputPathError(f"{what} {str(target)!r} could not be written: the disk is full "
                                  f"({full} bytes free in {str(target.parent)!r})") from exc
        raise
