"""Write an output folder all at once: build it under a temporary name, then rename.

A failed or interrupted run leaves the destination as it was: absent, or the previous
complete result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from .errors import OutputError


def check_destination(destination: Path, overwrite: bool) -> None:
    """Fail early, before any work, when the destination cannot be (re)written."""
    if destination.exists() and not destination.is_dir():
        raise OutputError(f"output path {destination} is a file; expected a folder name")
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise OutputError(
            f"output folder {destination} already exists and is not empty; "
            "pass --overwrite to replace it, or choose another -o folder"
        )
    parent = destination.resolve().parent
    if not parent.exists():
        raise OutputError(f"cannot create {destination}: parent folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot create {destination}: {parent} is a file, not a folder; choose another -o folder")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot write to {parent}: permission denied; choose another -o folder")


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


@contextlib.contextmanager
def staged_directory(destination: Path, overwrite: bool) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``destination``; publish it on success."""
    destination = Path(destination)
    check_destination(destination, overwrite)
    parent = destination.resolve().parent
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot create a folder in {parent}: {exc.strerror}; choose another -o folder") from None
    try:
        yield staging
        if terminated():  # terminated while a library swallowed the exception
            raise Terminated()
        _publish(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, destination: Path) -> None:
    staging.chmod(0o755)
    if not destination.exists():
        staging.rename(destination)
        return
    backup = destination.with_name(f".{destination.name}.old-{os.getpid()}")
    destination.rename(backup)
    try:
        staging.rename(destination)
    except BaseException:
        backup.rename(destination)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small report file under a temporary name, then rename it into place."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file under a temporary name in its folder, then rename it into place."""
    path = Path(path)
    if not path.parent.exists():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
