"""eval and check with --workers: the files run in several processes, each on a share of the
images, with the same results as one process; a shard whose worker dies runs again."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import mobiledeploy
from mobiledeploy.errors import MobiledeployError
from mobiledeploy.runtime.host import Process, WorkerDied, outputs_of
from conftest import cli, killing_first


@pytest.fixture(scope="module")
def saved_batches(tmp_path_factory, reference_build):
    """Seven batches of seeded inputs in [-1, 1], saved as the worker processes read them (.npy files)."""
    folder = tmp_path_factory.mktemp("batches")
    rng = np.random.default_rng(4)
    paths = []
    for i in range(7):
        path = folder / f"batch_{i:05d}.npy"
        np.save(path, rng.uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32))
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("file", ["model_int8.tflite", "model_int8.onnx", "model_float.tflite", "model_float.onnx"])
def test_shards_give_the_single_process_outputs(reference_build, saved_batches, tmp_path, file):
    fmt = file.rsplit(".", 1)[1]
    single = outputs_of(reference_build / file, fmt, saved_batches, tmp_path, Process())
    for workers in (2, 3, 20):  # 20: more workers than batches, one batch each
        sharded = outputs_of(reference_build / file, fmt, saved_batches, tmp_path, Process(), workers)
        assert sharded.shape == (35, 10) and np.array_equal(sharded, single), workers


def test_eval_with_workers_reports_what_one_process_reports(reference_build, eval_subset):
    one = mobiledeploy.evaluate_build(reference_build, eval_subset, batch_size=16)
    three = mobiledeploy.evaluate_build(reference_build, eval_subset, batch_size=16, workers=3)
    assert one.samples == three.samples == 200
    assert one.rows == three.rows and one.warnings == three.warnings
    assert one.per_sample.keys() == three.per_sample.keys()
    for name, hits in one.per_sample.items():  # which images each file gets right and agrees on, image by image
        assert hits.keys() == three.per_sample[name].keys() == {"agreement", "top1", "top5"}
        assert all(np.array_equal(hits[k], three.per_sample[name][k]) for k in hits)


def test_check_takes_workers_and_refuses_a_bad_count(reference_build, eval_subset):
    result = cli("check", reference_build, "--data", eval_subset, "--workers", 2, "--json")
    assert result.exit_code == 0, result.output
    assert all(rule["passed"] for rule in json.loads(result.output)["rules"])
    bad = cli("eval", reference_build, "--data", eval_subset, "--workers", 0)
    assert bad.exit_code == 2 and "--workers" in bad.output
    for workers in (0, 1.5, True, 10_000):
        with pytest.raises(MobiledeployError, match="workers="):
            mobiledeploy.evaluate_build(reference_build, eval_subset, workers=workers)


def _worker_pids(marker: str) -> list[int]:
    """This process's own worker processes whose spec lies in a folder named ``marker`` (not
    those of tests running beside it, whose shards have the same folder names)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and b"mobiledeploy.runtime.worker" in command \
                and any(marker.encode() in part for part in command):
            found.append(int(entry.name))
    return found


@pytest.mark.slow  # processes killed from outside: the full tier (.ci/run)
def test_a_shard_whose_worker_is_killed_runs_again(reference_build, eval_subset):
    """SIGKILL the first worker of the first shard (a real process, killed from outside): the
    shard runs again, the report says so, and the results are those of an undisturbed run."""
    with killing_first(lambda: _worker_pids("shard_000_0")) as killed:
        disturbed = mobiledeploy.evaluate_build(reference_build, eval_subset, batch_size=2, workers=2)
    assert killed, "no worker of the first shard was seen running"
    assert any("died" in w and "ran again" in w for w in disturbed.warnings), disturbed.warnings
    calm = mobiledeploy.evaluate_build(reference_build, eval_subset, batch_size=2)
    assert disturbed.rows == calm.rows


def test_a_worker_that_keeps_dying_fails_the_command_in_one_line(reference_build, saved_batches, tmp_path):
    """A worker that dies on every attempt (here: an interpreter that exits at once) fails with
    the process's own last line, after the retry."""
    dying = Process(command=("/bin/sh", "-c", "echo worker out of memory >&2; exit 137", "sh"), device="cpu")
    with pytest.raises(WorkerDied, match="exit 137.*worker out of memory"):
        outputs_of(reference_build / "model_int8.tflite", "tflite", saved_batches, tmp_path, dying, workers=2)
