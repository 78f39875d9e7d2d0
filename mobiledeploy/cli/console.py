"""Where the CLI prints: a console as wide as the terminal (or $COLUMNS in a log), tables that fit
it, and progress on stderr that works on a terminal and in a CI log alike."""

from __future__ import annotations

import os
import sys
import time


def make_console():
    """The console tables print on: as wide as the terminal, or, when the output goes to a pipe or
    a CI log, as wide as $COLUMNS says (80 when unset), never a fixed width that wraps elsewhere."""
    from rich.console import Console

    console = Console()
    if console.is_terminal:
        return console
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() and int(columns) > 20 else 80)


def fitted_table(console, title: str, columns: list[str], rows: list[list[str]], *, left: tuple[str, ...] = (),
                 names: tuple[str, ...] = (), optional: tuple[str, ...] = ()):
    """A rich table that reads at the console's width. The first column and the ``names`` columns
    (files, layers, runtimes: their ends tell them apart) never wrap; the others may wrap between
    words. When the columns cannot all fit, the ``optional`` ones are left out, in that order, and
    the title says which (``--json`` has them all). ``left``: columns of text, aligned left."""
    from rich.markup import escape
    from rich.table import Table

    whole = {columns[0], *names}
    text = whole | set(left)  # aligned left, also when they have to fold

    def width(i: int) -> int:  # cell + padding + border
        header = len(columns[i]) if columns[i] in whole else max(len(word) for word in columns[i].split())
        return max([header] + [len(row[i]) for row in rows]) + 4  # and a margin: rich shares out the width

    keep = list(range(len(columns)))
    dropped = []
    for name in optional:
        if sum(width(i) for i in keep) + 1 <= console.width:
            break
        if name in columns:
            keep.remove(columns.index(name))
            dropped.append(name)
    note = f" (not shown at {console.width} columns: {', '.join(dropped)})" if dropped else ""
    table = Table(title=escape(title + note))
    if sum(width(i) for i in keep) + 1 > console.width:  # too narrow even so: names fold rather than numbers vanish
        whole = set()
    for i in keep:
        table.add_column(escape(columns[i]), overflow="fold", no_wrap=columns[i] in whole,
                         justify="left" if columns[i] in text else "right")
    for row in rows:
        table.add_row(*(escape(cell) for cell in (row[i] for i in keep)))
    return table


class Progress:
    """Progress on stderr: a bar per step with the time left on a terminal; in a CI log (stderr not
    a terminal) a line when each step starts and ends, with its time, and for long steps a line
    every tenth of the way with the time left (at most one every ``interval`` seconds). Both write
    to the stderr this process started with, so a converter's captured output (``quiet``) never
    swallows or freezes them."""

    def __init__(self, enabled: bool, interval: float = 2.0):
        self.enabled = enabled
        self.interval = interval
        self._last = 0.0
        self._bar = None
        self._tasks: dict[str, int] = {}
        self._step: str | None = None
        self._started = self._step_started = 0.0
        self._next_tenth = 0
        self._stream = None
        self._owned = False

    def __enter__(self):
        if not self.enabled:
            return self
        self._stream, self._owned = _own_stderr()
        self._started = time.monotonic()
        if self._stream.isatty():
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=self._stream),
                                 transient=True)
            self._bar.start()
        return self

    def update(self, step: str, done: int, total: int) -> None:
        if self._stream is None:
            return
        if self._bar is not None:
            if step not in self._tasks:
                for task in self._tasks.values():  # a new step means the earlier ones are done
                    self._bar.update(task, completed=self._bar.tasks[task].total)
                self._tasks[step] = self._bar.add_task(step, total=max(total, 1))
            self._bar.update(self._tasks[step], completed=done, total=max(total, 1))
            return
        now = time.monotonic()
        if step != self._step:
            self._finish(now)
            self._step, self._step_started, self._next_tenth = step, now, 1
            self._log(now, f"{step} ...")
        elif total > 1 and done >= self._next_tenth * total / 10 and now - self._last >= self.interval:
            self._next_tenth = int(10 * done / total) + 1
            left = (now - self._step_started) * (total - done) / max(done, 1)
            self._log(now, f"{step}: {done}/{total}, about {left:.0f} s left")

    def _finish(self, now: float) -> None:
        if self._step is not None:
            self._log(now, f"{self._step}: done in {now - self._step_started:.1f} s")

    def _log(self, now: float, text: str) -> None:
        self._last = now
        self._stream.write(f"[{now - self._started:7.1f} s] {text}\n")

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()
        elif self._stream is not None and exc[0] is None:
            self._finish(time.monotonic())
        if self._owned:
            self._stream.close()


def _own_stderr():
    """A stream on this process's stderr that a converter redirecting fd 2 cannot take over, and
    whether it is ours to close; stderr itself when it has no file descriptor (a test's runner)."""
    import io

    try:
        return os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1), True
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return sys.stderr, False
