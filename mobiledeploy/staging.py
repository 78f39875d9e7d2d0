"""Write outputs all at once, to places checked before any work: a build folder is made under a
temporary name and renamed into place; a report file is written beside its target and renamed.

A failed or interrupted run leaves the destination as it was: absent, or the previous complete
result. Before the work starts the destination is checked: not a file, not a symbolic link, not
the current folder or the root, not a folder holding the run's own inputs, and with
``--overwrite`` only a previous build (a folder with a manifest) is replaced, never another
folder. A lock beside it keeps two runs from writing the same folder; the temporary folders of
runs that died (SIGKILL) are removed by the next run that holds the lock. The rename is shielded
from SIGTERM and Ctrl-C, so a run reports truthfully whether its output was published.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputError

MANIFEST = "manifest.json"  # what marks a folder as a build that --overwrite may replace
# errors of the disk, not of the program: they become one line
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def check_destination(destination: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Fail early, before any work, when the destination cannot or must not be (re)written."""
    destination = Path(destination)
    if destination.is_symlink():
        raise OutputError(f"output path {destination} is a symbolic link; name a real folder with -o")
    resolved = destination.resolve()
    if resolved == Path(resolved.anchor) or resolved == Path.cwd().resolve():
        raise OutputError(f"output folder {destination} is {'the root' if resolved.parent == resolved else 'the current folder'}; "
                          "name a folder of its own with -o (e.g. -o build/)")
    for source in inputs:
        source = Path(source).resolve()
        if source == resolved or resolved in source.parents:
            raise OutputError(f"output folder {destination} holds the input {source}; writing it would replace "
                              "the input: choose another -o folder")
    if destination.exists() and not destination.is_dir():
        raise OutputError(f"output path {destination} is a file; expected a folder name")
    if destination.exists() and any(destination.iterdir()):
        if not overwrite:
            raise OutputError(f"output folder {destination} already exists and is not empty; "
                              "pass --overwrite to replace it, or choose another -o folder")
        if not (destination / MANIFEST).is_file():
            raise OutputError(f"output folder {destination} is not a mobiledeploy build (no {MANIFEST}); --overwrite "
                              "replaces only builds: choose another -o folder")
    parent = resolved.parent
    if not parent.exists():
        raise OutputError(f"cannot create {destination}: parent folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot create {destination}: {parent} is a file, not a folder; choose another -o folder")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write to {parent}: permission denied; choose another -o folder")


def check_output_file(path: Path | None, option: str) -> None:
    """Fail early, before any work, when a report file cannot be written where asked."""
    if path is None or str(path) == "-":
        return
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder; name a file")
    if path.exists() and not stat.S_ISREG(os.stat(path).st_mode):
        raise OutputError(f"{option} {path} is not a regular file (a FIFO or device); name a file")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{option} {path}: cannot write to {parent} (permission denied)")


class Terminated(BaseException):
    """SIGTERM (CI timeouts, docker stop) as an exception, so output staging cleans up."""


_termination = threading.Event()


def terminate(signum=None, frame=None) -> None:
    """Signal handler: remember the request (a library's bare ``except:`` may swallow the
    exception, so publishing checks the flag too) and raise ``Terminated``."""
    _termination.set()
    raise Terminated()


def terminated() -> bool:
    """Whether SIGTERM arrived: then whatever error a library raised instead of ``Terminated``
    (one that caught it and raised its own) is a consequence of the termination."""
    return _termination.is_set()


def published(interruption: BaseException) -> bool:
    """Whether the output was published before ``interruption`` (SIGTERM, Ctrl-C) stopped the run:
    then it left a complete result, not nothing."""
    return bool(getattr(interruption, "published", False))


@contextlib.contextmanager
def staged_directory(destination: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``; publish it on success."""
    destination = Path(destination)
    inputs = list(inputs)
    check_destination(destination, overwrite, inputs)
    parent = destination.resolve().parent
    with _lock(parent, destination.name):
        check_destination(destination, overwrite, inputs)  # again: another run may have published meanwhile
        _remove_stale(parent, destination.name)
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-{os.getpid()}-", dir=parent))
        except OSError as exc:
            raise OutputError(f"cannot create a folder in {parent}: {exc.strerror}; choose another -o folder") from None
        try:
            try:
                yield staging
            except OSError as exc:
                if exc.errno in DISK_ERRORS:
                    raise OutputError(f"cannot write the build in {parent}: {exc.strerror}; free space or "
                                      "choose another -o folder") from None
                raise
            if terminated():  # terminated while a library swallowed the exception
                raise Terminated()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            _publish(staging, destination)
        except (Terminated, KeyboardInterrupt) as exc:  # held during the rename, delivered right after it
            exc.published = destination.exists() and not staging.exists()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


@contextlib.contextmanager
def _lock(parent: Path, name: str) -> Iterator[None]:
    """An exclusive lock on ``.NAME.lock`` beside the destination, held for the run; the kernel
    releases it when the process dies, so a crashed run never blocks the next."""
    path = parent / f".{name}.lock"
    try:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"cannot create {path}: {exc.strerror}; choose another -o folder") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"output folder {parent / name} is being written by another mobiledeploy run; "
                              "wait for it or choose another -o folder") from None
        yield
        with contextlib.suppress(OSError):
            path.unlink()
    finally:
        os.close(handle)


def _remove_stale(parent: Path, name: str) -> None:
    """The temporary folders of earlier runs for this destination: with the lock held, no live
    run owns one, so they are what SIGKILL or a power cut left behind."""
    for stale in parent.glob(f".{name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if (parent / name).exists():
        for old in parent.glob(f".{name}.old-*"):
            shutil.rmtree(old, ignore_errors=True)


def _publish(staging: Path, destination: Path) -> None:
    """Rename the finished folder into place, with SIGTERM and Ctrl-C held until it is done."""
    staging.chmod(0o777 & ~_umask())
    blocked = {signal.SIGTERM, signal.SIGINT}
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        if not destination.exists():
            staging.rename(destination)
        else:
            backup = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            destination.rename(backup)
            try:
                staging.rename(destination)
            except BaseException:
                backup.rename(destination)
                raise
            shutil.rmtree(backup, ignore_errors=True)
    finally:
        if in_main:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


def _umask() -> int:
    """This process's umask, read without changing it (os.umask can only set it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small report file under a temporary name, then rename it into place."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file under a temporary name in its folder, then rename it into place, with the
    permissions the umask gives new files (mkstemp alone would make it 0600)."""
    path = Path(path)
    check_output_file(path, "output file")
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.resolve().parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(handle, 0o666 & ~_umask())
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except OSError as exc:
        Path(temp).unlink(missing_ok=True)
        if exc.errno in DISK_ERRORS:
            raise OutputError(f"cannot write {path}: {exc.strerror}") from None
        raise
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
