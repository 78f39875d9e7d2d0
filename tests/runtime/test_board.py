"""Real boards over SSH (--device ssh://user@host[:port]), tested against a real OpenSSH server
started on 127.0.0.1 with throwaway keys: the "board" is this machine, so its results must be
the local ones exactly. No mocks of SSH."""

import hashlib
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import mobiledeploy
from mobiledeploy.errors import MobiledeployError
from mobiledeploy.runtime.board import open_board
from mobiledeploy.runtime.ssh import BoardUnreachable, parse_address
from conftest import cli, messages
from ssh_server import command_line, descendants, kill_tree, ssh_server

PYTHON = sys.executable  # the board's Python: this test's, which has numpy and both runtimes


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    with ssh_server(tmp_path_factory.mktemp("board")) as server:
        yield server


def _without_device(rows):
    """eval rows without the columns only a device run has (its label, the comparison with x86)."""
    return [{k: v for k, v in row.items() if k != "device" and not k.startswith("x86_")} for row in rows]


def test_eval_check_and_bench_over_ssh_match_this_machine(reference_build, eval_subset, board):
    device, _, cache = board
    local = mobiledeploy.evaluate_build(reference_build, eval_subset, batch_size=32)
    remote = mobiledeploy.evaluate_build(reference_build, eval_subset, batch_size=32, device=device,
                                         remote_python=PYTHON, workers=2)
    assert remote.device == device and remote.samples == local.samples == 200
    assert _without_device(remote.rows) == _without_device(local.rows)
    for row in remote.rows[1:]:  # the same machine's kernels: every output identical to this CPU's
        assert row["device"] == device and row["x86_identical"] == 1.0, row
    for name, hits in local.per_sample.items():
        assert all(np.array_equal(hits[k], remote.per_sample[name][k]) for k in hits)
    # the artifacts were copied once each and are kept by their sha256; the run folders are gone
    kept = sorted(p.name for p in (cache / "board" / "artifacts").iterdir())
    assert len(kept) == 4 and all(len(name.split(".")[0]) == 64 for name in kept)
    assert not list((cache / "board" / "runs").iterdir())

    checked = cli("check", reference_build, "--data", eval_subset, "--device", device, "--remote-python", PYTHON,
                  "--json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)["report"]["device"] == device

    bench = mobiledeploy.bench_build(reference_build, device=device, remote_python=PYTHON, num_runs=5,
                                     min_secs=0.0, warmup_runs=1)
    assert bench.device == device and len(bench.rows) == 4
    for row in bench.rows:  # labelled as the board, with what the board says about itself
        assert row.device == device and row.median_ms > 0 and row.board["cores"] >= 1
        assert row.board["onnxruntime"] == metadata.version("onnxruntime")
    shown = cli("bench", reference_build, "--device", device, "--remote-python", PYTHON, "--num-runs", 3,
                "--min-secs", 0)
    assert shown.exit_code == 0 and f"{device} (device latency)" in shown.output.replace("\n", " ")


def test_a_damaged_copy_on_the_board_is_refused_then_sent_again(reference_build, eval_subset, board):
    device, _, cache = board
    mobiledeploy.bench_build(reference_build / "model_int8.tflite", device=device, remote_python=PYTHON,
                             num_runs=1, min_secs=0.0, warmup_runs=0)
    digest = hashlib.sha256((reference_build / "model_int8.tflite").read_bytes()).hexdigest()
    kept = cache / "board" / "artifacts" / f"{digest}.tflite"
    kept.write_bytes(kept.read_bytes()[:-16] + b"\0" * 16)  # the board's copy changed after it was sent
    with pytest.raises(MobiledeployError, match="sha256"):
        mobiledeploy.bench_build(reference_build / "model_int8.tflite", device=device, remote_python=PYTHON,
                                 num_runs=1, min_secs=0.0, warmup_runs=0)
    assert not kept.exists()  # removed, so that the next run sends it again
    again = mobiledeploy.bench_build(reference_build / "model_int8.tflite", device=device, remote_python=PYTHON,
                                     num_runs=1, min_secs=0.0, warmup_runs=0)
    assert again.rows[0].median_ms > 0 and kept.exists()


def test_unknown_and_changed_host_keys_are_refused(reference_build, eval_subset, board, tmp_path):
    device, _, _ = board
    known = Path.home() / ".ssh" / "known_hosts"
    genuine = known.read_text()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[1]
    try:
        known.write_text(genuine.rsplit(" ", 1)[0] + f" {other}\n")  # another machine's key at that address
        with pytest.raises(BoardUnreachable, match="host key differs"):
            open_board(device, PYTHON)
        known.write_text("")  # never seen: refused, not trusted on first use
        with pytest.raises(BoardUnreachable, match="not in known_hosts"):
            open_board(device, PYTHON)
        assert known.read_text() == ""  # and not added
        result = cli("eval", reference_build, "--data", eval_subset, "--device", device)
        assert result.exit_code == 1 and len(messages(result.output)) == 1, result.output
    finally:
        known.write_text(genuine)


def test_a_python_without_the_runtimes_is_refused_in_one_line(reference_build, board, tmp_path):
    device, _, _ = board
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    with pytest.raises(MobiledeployError, match="find numpy, onnxruntime and ai-edge-litert.*install"):
        open_board(device, str(tmp_path / "bare" / "bin" / "python"))
    with pytest.raises(MobiledeployError, match="remote-python names the Python on a board"):
        mobiledeploy.bench_build(reference_build, remote_python=PYTHON)


@pytest.mark.parametrize("printed", [b"[1]", b'{"numpy": 2}', b"[" * 100_000, b"1" * 400, b"\xff\xfe"],
                         ids=["a list", "a number", "deep", "400 digits", "not UTF-8"])
def test_a_python_that_prints_hostile_versions_is_refused_in_one_line(board, tmp_path, printed):
    """The board's reply is read as hostile: a list, a number for a version, JSON nested 100,000
    deep (RecursionError in json.loads), an integer of 400 digits, bytes that are not UTF-8."""
    device, _, _ = board
    (tmp_path / "reply").write_bytes(printed + b"\n")
    fake = tmp_path / "python"  # what the board runs as its Python: it prints the reply
    fake.write_text(f"#!/bin/sh\ncat '{tmp_path / 'reply'}'\n")
    fake.chmod(0o755)
    with pytest.raises(MobiledeployError, match="printed no versions") as raised:
        open_board(device, str(fake))
    assert "\n" not in str(raised.value)


def test_a_hostile_result_from_the_board_is_one_line(reference_build, board, tmp_path):
    """A board whose worker writes JSON nested 100,000 deep as its result (and exits 0): no result,
    so the run fails in one line, where json.loads would raise RecursionError."""
    device, _, _ = board
    fake = tmp_path / "python"  # the real Python for the probe; as the worker, it writes the result
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = -m ]; then exec '{PYTHON}' -c "
                    "\"open('result.json', 'w').write('[' * 100000)\"; fi\n"
                    f"exec '{PYTHON}' \"$@\"\n")
    fake.chmod(0o755)
    with pytest.raises(MobiledeployError, match="worker process failed") as raised:
        mobiledeploy.bench_build(reference_build, device=device, remote_python=str(fake), num_runs=1,
                                 min_secs=0.0, warmup_runs=0)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("device", ["ssh://", "ssh://host/path", "ssh://user:secret@host", "ssh://host:0",
                                    "ssh://host:99999", "ssh://ho st", "ssh://-oProxyCommand=x", "sftp://host"])
def test_bad_addresses_are_usage_errors(reference_build, device):
    result = cli("bench", reference_build, "--device", device)
    assert result.exit_code == 2 and "--device" in result.output, result.output
    with pytest.raises(MobiledeployError):
        parse_address(device)


def test_a_board_that_is_not_there_is_one_line(reference_build):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = cli("bench", reference_build, "--device", f"ssh://127.0.0.1:{port}")
    assert result.exit_code == 1 and len(messages(result.output)) == 1
    assert "cannot connect to 127.0.0.1" in result.output


@pytest.mark.slow  # a server killed mid-run: the full tier (.ci/run)
def test_a_dropped_connection_is_one_clear_line_and_writes_nothing(reference_build, tmp_path):
    with ssh_server(tmp_path / "server") as (device, server, _):
        out = tmp_path / "bench.csv"
        running = subprocess.Popen(
            [sys.executable, "-m", "mobiledeploy", "bench", str(reference_build), "--device", device,
             "--remote-python", PYTHON, "--min-secs", "600", "--max-secs", "600", "--csv", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not any("mobiledeploy.runtime.worker" in command_line(p) for p in descendants(server.pid)):
            assert running.poll() is None and time.monotonic() < deadline, running.communicate()
            time.sleep(0.2)
        kill_tree(server.pid)  # the board goes away mid-run: its sessions, the listener, the worker
        _, stderr = running.communicate(timeout=120)
    assert running.returncode == 1, stderr
    lines = messages(stderr)  # its one line, after the progress log
    assert len(lines) == 1 and device in lines[0] and "connection dropped" in lines[0], stderr
    assert not out.exists() and not list(tmp_path.glob("bench.csv*"))


@pytest.mark.slow  # pip installs the runtimes on the "board": the full tier (.ci/run)
def test_the_board_python_is_set_up_on_first_use_with_the_host_versions(board):
    device, _, cache = board
    first = open_board(device)
    assert dict(first.runtimes) == {name: metadata.version(name) for name in ("ai-edge-litert", "numpy",
                                                                                  "onnxruntime")}
    assert first.python.startswith(str(cache)) and Path(first.python).is_file()
    complete = Path(first.python).parents[1] / "complete"
    made = complete.stat().st_mtime_ns
    said = []
    assert open_board(device, say=said.append).python == first.python  # kept: the second time sets nothing up
    assert said == [f"connect to {device}"] and complete.stat().st_mtime_ns == made
