"""Atomic file writes shared by the writers in ``candlejax.io`` (safetensors, npy/npz, GGUF, CT2).

requires: os, tempfile, fcntl (POSIX; without it stale temporary files are left in place)
provides: ``atomic_file(path)`` (a binary file object), ``atomic_name(path)`` (a file name, for
writers that open the name themselves, such as the safetensors package).

A save writes a temporary file next to the target, fsyncs it, gives it the permissions of the file
it replaces (a new file: the umask's) and moves it onto the target with ``os.replace``, then fsyncs
the folder: a crash or an exception leaves the previous file untouched. A symbolic link is written
through, as ``File::create``, ``numpy.save`` and ``torch.save`` do: its target is replaced (a
dangling link creates it) and the link stays a link. A file the process may not write (``os.access``)
is refused with ``errors.NoPermission``, as ``open(path, "wb")`` refuses it. Writers hold an ``flock`` on
their temporary file (or folder); those left by a killed writer are removed by the next save of the
same target. Errors of the save (creating, writing, fsyncing or renaming the temporary file: a full
disk's ``ENOSPC``) are candlejax ``FileAccess`` errors naming the target that keep the ``OSError``
subclass and errno.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from candlejax import errors

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: stale temporary files are left in place
    fcntl = None  # type: ignore[assignment]

PathLike = str | os.PathLike


def _remove_stale_temps(d: str, prefix: str) -> None:
    """Delete ``{prefix}*.tmp`` files and folders in ``d`` whose writer died (nobody holds their lock)."""
    if fcntl is None:
        return
    try:
        names = [n for n in os.listdir(d) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for n in names:
        p = os.path.join(d, n)
        try:  # never through a link, nor blocking on a FIFO: only the files and folders of a save are ours
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            if not (stat.S_ISREG(os.fstat(fd).st_mode) or stat.S_ISDIR(os.fstat(fd).st_mode)):
                raise OSError(errno.EINVAL, "not a file or folder")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a live writer holds it
            continue
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(p)
        os.close(fd)


def _target_error(e: OSError, path: str) -> errors.FileAccess:
    """``e`` (raised on a temporary file) retold about the target ``path``: a candlejax error that keeps
    the OSError type (``PermissionError``, ``FileNotFoundError``, ...) and errno."""
    return errors.os_error(e, "write", path, f"cannot write {path}: {e.strerror}")


class _TargetFile(io.FileIO):
    """The temporary file's raw file: a failed write (a full disk: ``ENOSPC``) raises the candlejax
    error of ``_target_error``, naming the target, instead of a bare ``OSError``."""

    def __init__(self, fd: int, path: str):
        super().__init__(fd, "wb", closefd=False)
        self._target = path

    def write(self, b: Any) -> int | None:
        try:
            return super().write(b)
        except OSError as e:
            if isinstance(e, errors.Error):
                raise
            raise _target_error(e, self._target) from None


def _prepare(path: PathLike) -> tuple[str, str, str, str]:
    """The name to report, the file to replace, its folder and the prefix of its temporary files.

    A symbolic link is followed, as ``File::create`` / ``open(path, "wb")`` / ``numpy.save`` do: the
    link's target is replaced (a dangling link creates it) and the link stays a link. A missing folder
    or a target that is a folder is reported against the given name."""
    path = errors.path_arg(path, "write")
    target = os.path.realpath(path) if os.path.islink(path) else path
    if os.path.islink(target):  # realpath stops on a cycle of links
        e = errors.FileAccess(
            "write", path, "too many levels of symbolic links",
            message=f"cannot write {path}: too many levels of symbolic links",
        )
        e.errno = errno.ELOOP
        raise e
    d = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(d):  # candlejax errors that are also FileNotFoundError / IsADirectoryError
        raise errors.NoSuchFile("write", path, message=f"cannot write {path}: its folder {d} does not exist")
    if os.path.isdir(target):
        raise errors.IsADirectory("write", path, message=f"cannot write {path}: it is a folder")
    if os.path.exists(target) and not os.access(target, os.W_OK):  # as open(path, "wb"): the rename would not ask
        raise errors.NoPermission("write", path, message=f"cannot write {path}: Permission denied (a read-only file)")
    prefix = "." + os.path.basename(target) + "."
    _remove_stale_temps(d, prefix)
    return path, target, d, prefix


def _lock(fd: int) -> None:
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _commit(tmp: str, target: str, d: str, path: str) -> None:
    """fsync ``tmp``, give it the permissions of the file it replaces (else the umask's), move it onto
    ``target`` (``path`` resolved through its links; errors name ``path``) and fsync the folder."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)  # a full disk may first show here (delayed allocation, NFS)
    except OSError as e:
        raise _target_error(e, path) from None
    finally:
        os.close(fd)
    try:  # a file written in place (Candle, numpy) keeps its mode: a private 0600 checkpoint stays private
        mode = os.stat(target).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)
    try:
        os.replace(tmp, target)
    except OSError as e:
        raise _target_error(e, path) from None
    with contextlib.suppress(OSError):
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[IO[bytes]]:
    """Write ``path`` atomically: a temporary file in the same directory, fsync'd, then ``os.replace``.

    On any exception the temporary file is removed and an existing ``path`` is left untouched. The
    writer holds an exclusive ``flock`` on its temporary file; temporary files of ``path`` left by a
    killed writer (no lock held) are removed by the next save of ``path``.
    """
    path, target, d, prefix = _prepare(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=d, prefix=prefix, suffix=".tmp")
    except OSError as e:
        raise _target_error(e, path) from None
    try:
        _lock(fd)
        with io.BufferedWriter(_TargetFile(fd, path)) as f:
            yield f
        _commit(tmp, target, d, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_name(path: PathLike) -> Iterator[str]:
    """A file name to write ``path`` through, for writers that open the name themselves.

    The safetensors package writes its own ``.tmpXXXXXX`` next to the name it is given and renames it
    there, without fsync and with mode 0600; so it gets a name inside a private locked folder
    ``.{name}.XXXX.tmp`` next to ``path``, and the result is fsync'd and moved as by ``atomic_file``.
    """
    path, target, d, prefix = _prepare(path)
    try:
        tmpdir = tempfile.mkdtemp(dir=d, prefix=prefix, suffix=".tmp")
    except OSError as e:
        raise _target_error(e, path) from None
    fd = os.open(tmpdir, os.O_RDONLY)
    try:
        _lock(fd)
        tmp = os.path.join(tmpdir, "data")
        yield tmp
        _commit(tmp, target, d, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        os.close(fd)


__all__ = ["atomic_file", "atomic_name"]
