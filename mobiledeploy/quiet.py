"""Silence what converters and runtimes print straight to the process's stdout/stderr.

The TFLite converter prints SavedModel signatures to stdout and LiteRT announces XNNPACK on
stderr from C++; that would corrupt ``--json`` output and bury our table. The chatter is kept
and attached to the exception if the wrapped call fails, so nothing useful is lost.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from typing import Iterator


@contextlib.contextmanager
def captured_output() -> Iterator[None]:
    """Redirect file descriptors 1 and 2 (Python and native writers alike) to a temp file."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no real descriptors (embedded interpreters): nothing to silence
        yield
        return
    # Python-level writers may not use fds 1/2 (sys.stdout replaced, e.g. by click's test
    # runner), so redirect those objects too.
    python_sink = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink, \
            contextlib.redirect_stdout(python_sink), contextlib.redirect_stderr(python_sink):
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException as exc:
            sys.stdout.flush()
            sys.stderr.flush()
            sink.seek(0)
            tail = (sink.read().decode("utf-8", "replace") + python_sink.getvalue())[-4000:]
            if tail.strip() and hasattr(exc, "add_note"):
                exc.add_note(f"library output before the failure:\n{tail}")
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def import_tensorflow():
    """Import TensorFlow (and Keras) without its C++ start-up banner on stderr (unless the user
    chose a log level of their own)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with captured_output():
        import keras  # noqa: F401  (Keras picks the TensorFlow backend and imports it)
        import tensorflow
    return tensorflow
