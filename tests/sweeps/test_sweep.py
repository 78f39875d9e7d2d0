"""mobiledeploy sweep: a TOML matrix of models x settings x devices x evaluation sets, each task
cached by the content hash of its inputs; real builds of a tiny model, real evaluations."""

import csv
import json
import shutil
from pathlib import Path

import pytest

import mobiledeploy
from mobiledeploy.errors import MobiledeployError
from mobiledeploy.sweeps.plan import read_plan
from conftest import cli, messages, strict_json, write_images

TIMED = {"median_ms"}  # the one column that differs from run to run


def _untimed(rows):
    return [{k: v for k, v in row.items() if k not in TIMED} for row in rows]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Six class folders of seeded images, for the tiny model's six classes."""
    folder = tmp_path_factory.mktemp("labelled")
    for k, name in enumerate("abcdef"):
        write_images(folder / name, 6, seed=10 + k)
    return folder


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.toml").write_text(text)
    return folder / "sweep.toml"


def _sweep(model: Path, calib: Path, data: Path, settings: str = "", extra: str = "") -> str:
    return (f'[[models]]\npath = "{model}"\nname = "tiny"\n[data]\ncalib = "{calib}"\neval = "{data}"\n'
            f"{settings}{extra}")


SETTINGS = '[settings.default]\nnum_calib = 20\nnum_holdout = 10\n[settings.plain]\npreset = "plain"\n' \
           "num_calib = 20\nnum_holdout = 10\n"


def test_a_sweep_runs_every_cell_then_reruns_only_what_changed(tiny_model_file, calib_folder, labelled, tmp_path):
    toml = _write(tmp_path, _sweep(tiny_model_file, calib_folder, labelled, SETTINGS, "[bench]\nnum_runs = 3\n"
                                   "min_secs = 0\nwarmup_runs = 0\n"))
    out = tmp_path / "out"
    result = cli("sweep", toml, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    first = strict_json(result.output, "sweep")
    assert (first["tasks_run"], first["tasks_cached"], first["tasks_failed"]) == (6, 0, 0)  # 2 builds, 2 evals, 2 benches
    rows = first["rows"]
    assert [(r["setting"], r["artifact"]) for r in rows] == [
        ("default", "model_int8.tflite"), ("default", "model_int8.onnx"),
        ("plain", "model_int8.tflite"), ("plain", "model_int8.onnx")]
    for row in rows:  # each cell is what eval and bench say about that build
        assert row["samples"] == 36 and 0 <= row["agreement"] <= 1 and row["median_ms"] > 0 and row["error"] is None
        assert row["top1_change"] == pytest.approx(100 * (row["top1"] - row["float_top1"]))
    build = next((out / "builds").glob("tiny.default.*"))
    report = mobiledeploy.evaluate_build(build, labelled)
    by_file = {r["artifact"]: r for r in report.rows}
    assert rows[0]["agreement"] == by_file["model_int8.tflite"]["agreement"]
    assert rows[1]["sqnr_db"] == pytest.approx(by_file["model_int8.onnx"]["sqnr_db"])
    with open(out / "results.csv", newline="") as stream:
        table = list(csv.DictReader(stream))
    assert [r["artifact"] for r in table] == [r["artifact"] for r in rows] and table[0]["model"] == "tiny"
    page = (out / "sweep.html").read_text()
    assert page.count("<tr><td>tiny</td>") == 4 and "model_int8.onnx" in page

    again = strict_json(cli("sweep", toml, "-o", out, "--json").output, "sweep")
    assert (again["tasks_run"], again["tasks_cached"]) == (0, 6)
    assert _untimed(again["rows"]) == _untimed(rows) and [r["median_ms"] for r in again["rows"]] == \
        [r["median_ms"] for r in rows]  # the measurements too come from the cache

    # a setting added, one result lost (an interrupted sweep) and one damaged: only those run
    lost, damaged = sorted((out / "results").glob("eval-*.json"))
    lost.unlink()
    damaged.write_text('{"rows": ')
    toml.write_text(_sweep(tiny_model_file, calib_folder, labelled, SETTINGS + '[settings.bias]\nrefine = "bias"\n'
                           "num_calib = 20\nnum_holdout = 10\n", "[bench]\nnum_runs = 3\nmin_secs = 0\n"
                           "warmup_runs = 0\n"))
    third = mobiledeploy.sweep(toml, out)
    assert (third.tasks_run, third.tasks_cached, third.tasks_failed) == (5, 4, 0)  # bias: 3 tasks; the 2 evals
    assert _untimed(third.rows[:4]) == _untimed(rows) and {r["setting"] for r in third.rows} == {"default", "plain",
                                                                                                 "bias"}


def test_a_failed_cell_is_reported_and_the_others_still_run(tiny_model_file, calib_folder, labelled, tmp_path):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not an HDF5 file at all")
    toml = _write(tmp_path, f'[[models]]\npath = "{broken}"\n' + _sweep(tiny_model_file, calib_folder, labelled,
                  "[settings.plain]\npreset = \"plain\"\nnum_calib = 20\nnum_holdout = 10\n", "[bench]\nenabled = false\n"))
    result = cli("sweep", toml, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    failed = [r for r in report["rows"] if r["error"]]
    assert len(failed) == 1 and failed[0]["model"] == "broken" and failed[0]["artifact"] is None
    assert failed[0]["error"].startswith("quantize: ") and "broken.h5" in failed[0]["error"]
    assert [r["artifact"] for r in report["rows"] if r["model"] == "tiny"] == ["model_int8.tflite", "model_int8.onnx"]
    assert report["tasks_failed"] == 1 and not list((tmp_path / "out" / "builds").glob("broken.*"))


@pytest.mark.parametrize("text, expected", [
    ("[[models]]\npath = 3\n[data]\ncalib = '.'\neval = '.'", "expected path ="),
    ("[[models]]\npath = 'missing.h5'\n[data]\ncalib = '.'\neval = '.'", "missing.h5: no such model"),
    ("[[models]]\npath = 'm.h5'\n[data]\ncalib = '.'\neval = '.'\n[surprise]", "unknown key 'surprise'"),
    ("[[models]]\npath = 'm.h5'\n[data]\ncalib = 'nowhere'\neval = '.'", "[data] calib: "),
    ("[[models]]\npath = 'm.h5'\n[data]\ncalib = '.'\neval = '.'\n[settings.x]\nrefine = 5", "[settings.x] refine"),
    ("[[models]]\npath = 'm.h5'\n[data]\ncalib = '.'\neval = '.'\n[settings.x]\nrefine = 'magic'",
     "unknown refine setting 'magic'"),
    ("[[models]]\npath = 'm.h5'\n[data]\ncalib = '.'\neval = '.'\n[settings.x]\ntrust_model_code = true",
     "pass --trust-model-code"),
    ("[[models]]\npath = 'm.h5'\n[data]\ncalib = '.'\neval = '.'\n[settings.x]\npreset = 'fast'", "preset: 'fast'"),
    ("[[models]]\npath = 'm.h5'\n[data]\ncalib = '.'\neval = '.'\n[devices]\npi = 'ssh://pi@-x'", "[devices] pi"),
    ("[[models]]\npath = 'm.h5'\n[data]\ncalib = '.'\neval = '.'\n[devices]\na = {device = 'cpu', remote_python = 'p'}",
     "remote_python is for ssh"),
    ("[[models]]\npath = 'm.h5'\n[[models]]\npath = 'm.h5'\n[data]\ncalib = '.'\neval = '.'", "'m' appears twice"),
    ("[[models]]\npath = 'm.h5'\n[data]\ncalib = '.'\neval = '.'\n[bench]\nnum_runs = -1", "[bench] num_runs"),
    ("[[models]\npath = 'm.h5'", "not valid TOML"),
    ("[[models]]\npath = 'm.h5'\nname = '../up'\n[data]\ncalib = '.'\neval = '.'", "is not a name"),
])
def test_a_bad_sweep_file_is_one_line_naming_the_key(tmp_path, text, expected):
    (tmp_path / "m.h5").write_bytes(b"x")
    toml = _write(tmp_path, text)
    with pytest.raises(MobiledeployError) as error:
        read_plan(toml)
    assert expected in str(error.value) and str(toml) in str(error.value)
    result = cli("sweep", toml, "-o", tmp_path / "out")
    assert result.exit_code == 1 and len(messages(result.output)) == 1 and not (tmp_path / "out").exists()


def test_budgets_and_the_output_folder_are_checked_before_any_work(tmp_path, calib_folder):
    (tmp_path / "m.h5").write_bytes(b"x")
    devices = "\n".join(f"d{i} = 'cpu'" for i in range(101))
    evals = ", ".join(f"e{i} = '.'" for i in range(100))
    toml = _write(tmp_path, f"[[models]]\npath = 'm.h5'\n[data]\ncalib = '.'\neval = {{ {evals} }}\n[devices]\n{devices}")
    with pytest.raises(MobiledeployError, match="10100 cells"):
        read_plan(toml)
    (tmp_path / "big.toml").write_text("# padding\n" * 200_000)
    with pytest.raises(MobiledeployError, match="bytes; a sweep file is expected under"):
        read_plan(tmp_path / "big.toml")
    toml = _write(tmp_path, f"[[models]]\npath = 'm.h5'\n[data]\ncalib = '{calib_folder}'\neval = '{calib_folder}'")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    for folder, expected in ((tmp_path / "taken", "is not a sweep's"), (calib_folder / "a", "overlap")):
        result = cli("sweep", toml, "-o", folder)
        assert result.exit_code == 1 and expected in result.output, result.output
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    bad = cli("sweep", toml, "--ray", "nowhere")
    assert bad.exit_code == 2 and "--ray" in bad.output


@pytest.mark.slow  # spawned processes import TensorFlow: the full tier (.ci/run)
def test_local_worker_processes_give_the_same_cells(tiny_model_file, calib_folder, labelled, tmp_path):
    toml = _write(tmp_path, _sweep(tiny_model_file, calib_folder, labelled, SETTINGS, "[bench]\nenabled = false\n"))
    one = mobiledeploy.sweep(toml, tmp_path / "one")
    two = mobiledeploy.sweep(toml, tmp_path / "two", workers=2)
    assert two.tasks_run == one.tasks_run == 4 and two.rows == one.rows
    shutil.rmtree(tmp_path / "two" / "results")  # the builds stay: only the evaluations run again
    assert mobiledeploy.sweep(toml, tmp_path / "two", workers=2).tasks_run == 2


def test_the_minimal_file_works_as_written(tmp_path):
    """The issue's minimal sweep file: two models, one calibration and one evaluation folder; every
    other table takes its default."""
    for name in ("models/a.h5", "other/b.keras"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    for folder in ("calibration_data", "eval_data"):
        (tmp_path / folder).mkdir()
    plan = read_plan(_write(tmp_path, '[[models]]\npath = "models/a.h5"\n[[models]]\npath = "other/b.keras"\n'
                                      '[data]\ncalib = "calibration_data/"\neval = "eval_data/"\n'))
    assert [(m.name, m.path) for m in plan.models] == [("a", tmp_path / "models/a.h5"), ("b", tmp_path / "other/b.keras")]
    assert [s.name for s in plan.settings] == ["default"] and [(d.name, d.device) for d in plan.devices] == [("cpu", "cpu")]
    assert plan.evals == (("eval", tmp_path / "eval_data"),) and plan.bench == () and plan.cells == 2
    assert plan.options_for(plan.models[0], plan.settings[0]) == mobiledeploy.PRESETS["default"]


def _published(builds: Path) -> list[Path]:
    """The manifests of the builds published in ``builds``: not those of a build still being
    written in its hidden staging folder (pathlib's ``*`` matches names that start with a dot)."""
    return [m for m in builds.glob("*/manifest.json") if not m.parent.name.startswith(".")]


@pytest.mark.slow  # a sweep stopped with SIGTERM in a child process: the full tier (.ci/run)
def test_an_interrupted_sweep_resumes_where_it_stopped(tiny_model_file, calib_folder, labelled, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    toml = _write(tmp_path, _sweep(tiny_model_file, calib_folder, labelled, SETTINGS, "[bench]\nenabled = false\n"))
    out = tmp_path / "out"
    running = subprocess.Popen([sys.executable, "-m", "mobiledeploy", "sweep", str(toml), "-o", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _published(out / "builds"):  # the first build is published
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.05)
    running.send_signal(signal.SIGTERM)
    _, stderr = running.communicate(timeout=120)
    assert running.returncode == 143 and "run the same command again to resume" in stderr, stderr
    kept = len(_published(out / "builds")) + len(list((out / "results").glob("*.json")))
    assert 1 <= kept < 4 and not list((out / "builds").glob(".*.partial-*"))  # whole builds only
    resumed = mobiledeploy.sweep(toml, out)
    assert (resumed.tasks_run, resumed.tasks_cached) == (4 - kept, kept) and not resumed.failed
    assert _untimed(resumed.rows) == _untimed(mobiledeploy.sweep(toml, tmp_path / "calm").rows)
