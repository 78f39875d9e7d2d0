"""eval and check with --ray: the shards run as tasks on a real local Ray cluster (started by the
test on 127.0.0.1 with two CPUs, stopped afterwards), with the results of one local process.
No mocks of Ray."""

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import mobiledeploy
from mobiledeploy.errors import MobiledeployError
from conftest import cli, killing_first
from ssh_server import command_line, descendants


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """(the head's address, its process): a Ray head on 127.0.0.1 with two worker CPUs."""
    ray = pytest.importorskip("ray")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp,
                             "--object-store-memory", str(200 << 20)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None and time.monotonic() < deadline, f"ray start failed: {head.communicate()}"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", head
    finally:
        ray.shutdown()
        head.terminate()
        head.wait(timeout=60)


pytestmark = pytest.mark.slow  # a Ray cluster takes seconds to start: the full tier (.ci/run)


def test_eval_on_ray_reports_what_one_process_reports(reference_build, eval_subset, ray_cluster):
    address, _ = ray_cluster
    one = mobiledeploy.evaluate_build(reference_build, eval_subset, batch_size=16)
    for workers in (1, 3):  # 1: as many shards as the cluster has CPUs (2)
        on_ray = mobiledeploy.evaluate_build(reference_build, eval_subset, batch_size=16, ray=address,
                                             workers=workers)
        assert on_ray.rows == one.rows and on_ray.warnings == one.warnings and on_ray.device == "cpu"
        for name, hits in one.per_sample.items():
            assert all(np.array_equal(hits[k], on_ray.per_sample[name][k]) for k in hits)
    checked = cli("check", reference_build, "--data", eval_subset, "--ray", address, "--json")
    assert checked.exit_code == 0, checked.output
    assert all(rule["passed"] for rule in json.loads(checked.output)["rules"])


def test_a_shard_whose_worker_is_killed_on_the_cluster_runs_again(reference_build, eval_subset, ray_cluster):
    """SIGKILL the first worker process a Ray task starts (a real process on the cluster, killed
    from outside): its shard runs again, the report says so, the results are undisturbed ones."""
    address, head = ray_cluster
    def workers_on_the_cluster() -> list[int]:
        return [pid for pid in descendants(head.pid) if "mobiledeploy.runtime.worker" in command_line(pid)]

    with killing_first(workers_on_the_cluster) as killed:
        disturbed = mobiledeploy.evaluate_build(reference_build, eval_subset, batch_size=2, ray=address)
    assert killed, "no worker process was seen running on the cluster"
    assert any("died" in w and "ran again" in w for w in disturbed.warnings), disturbed.warnings
    calm = mobiledeploy.evaluate_build(reference_build, eval_subset, batch_size=2)
    assert disturbed.rows == calm.rows


def test_bad_ray_addresses_are_refused_in_one_line(reference_build, eval_subset):
    for address in ("nowhere", "host:0", "ray://host:port", "a/b:6379"):
        result = cli("eval", reference_build, "--data", eval_subset, "--ray", address)
        assert result.exit_code == 2 and "--ray" in result.output, result.output
    with pytest.raises(MobiledeployError, match="nothing answers there"):
        mobiledeploy.evaluate_build(reference_build, eval_subset, ray=f"127.0.0.1:{_free_port()}")
    with pytest.raises(MobiledeployError, match="pick one of them"):
        mobiledeploy.evaluate_build(reference_build, eval_subset, ray="auto", device="ssh://pi@board")


def test_a_sweep_on_ray_gives_the_local_cells(tiny_model_file, calib_folder, ray_cluster, tmp_path):
    address, _ = ray_cluster
    toml = tmp_path / "sweep.toml"
    toml.write_text(f'[[models]]\npath = "{tiny_model_file}"\n[data]\ncalib = "{calib_folder}"\n'
                    f'eval = "{calib_folder}"\n[settings.default]\nnum_calib = 20\nnum_holdout = 10\n'
                    '[settings.plain]\npreset = "plain"\nnum_calib = 20\nnum_holdout = 10\n[bench]\nenabled = false\n')
    local = mobiledeploy.sweep(toml, tmp_path / "local")
    on_ray = mobiledeploy.sweep(toml, tmp_path / "ray", ray=address)
    assert on_ray.tasks_run == local.tasks_run == 4 and not on_ray.failed
    assert on_ray.rows == local.rows
