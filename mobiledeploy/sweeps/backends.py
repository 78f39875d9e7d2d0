"""Where a sweep's tasks run: this process (one at a time), N local processes, or a Ray cluster.
``task.run_task`` is the same function everywhere; the caller hears of each task as it ends."""

from __future__ import annotations

from typing import Callable

from ..runtime import cluster
from .task import run_task

Finished = Callable[[int, dict, dict], None]  # (tasks done so far, the task, its outcome)


def execute(tasks: list[dict], workers: int, ray: str | None, finished: Finished) -> None:
    """Run every task; ``finished`` is called in this thread as each one ends, in any order."""
    if not tasks:
        return
    if ray is not None:
        _on_ray(tasks, ray, finished)
    elif workers <= 1:
        for done, task in enumerate(tasks, 1):
            finished(done, task, run_task(task))
    else:
        _in_processes(tasks, workers, finished)


def _in_processes(tasks: list[dict], workers: int, finished: Finished) -> None:
    """N fresh processes (spawned: TensorFlow does not survive a fork), one task each at a time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {pool.submit(run_task, task): task for task in tasks}
        for done, future in enumerate(as_completed(running), 1):
            try:
                outcome = future.result()
            except BrokenProcessPool:
                outcome = {"error": "its worker process died (killed, or out of memory); run the sweep again"}
            finished(done, running[future], outcome)


def _on_ray(tasks: list[dict], address: str, finished: Finished) -> None:
    """One Ray task per sweep task (one CPU each); every node must see the sweep's paths."""
    cluster.connect(address, "cpu")
    import ray

    remote = ray.remote(num_cpus=1, max_retries=1)(run_task)
    running = {remote.remote(task): task for task in tasks}
    done = 0
    while running:
        ready, _ = ray.wait(list(running), num_returns=1)
        task = running.pop(ready[0])
        try:
            outcome = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            outcome = {"error": f"its Ray task failed ({type(exc).__name__}); run the sweep again"}
        done += 1
        finished(done, task, outcome)

