"""How long each step of a build takes, read off the progress reports the steps already make."""

from __future__ import annotations

import time

from .options import Progress


class StageClock:
    """The progress callback the stages report to, which also times them: a step runs from the
    first report of its name until another step reports (a step that comes back adds up). The
    times go to ``QuantizeResult.stages`` (``--json``), never into the build's files, which stay
    the same bytes run to run."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._step: str | None = None
        self._since = time.perf_counter()

    def __call__(self, step: str, done: int, total: int) -> None:
        if step != self._step:
            self._stop()
            self._step = step
        if self.progress is not None:
            self.progress(step, done, total)

    def _stop(self) -> None:
        now = time.perf_counter()
        if self._step is not None:
            self.seconds[self._step] = self.seconds.get(self._step, 0.0) + now - self._since
        self._since = now

    def stages(self) -> tuple[tuple[str, float], ...]:
        """(step, seconds) in the order the steps first ran, up to now."""
        self._stop()
        self._step = None
        return tuple(self.seconds.items())
