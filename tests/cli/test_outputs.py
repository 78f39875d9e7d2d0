"""What the commands hand to machines and CI logs: strict, versioned JSON; report files with the
modes the umask gives; the old spellings of renamed options; progress lines when stderr is a log."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import click
import pytest
from click.testing import CliRunner

from conftest import PROGRESS_LINE, REFERENCE_MODEL, ROOT, cli, strict_json
from mobiledeploy.cli.params import Renamed, renamed
from mobiledeploy.cli.console import Progress

QUICK = ["--warmup-runs", 1, "--num-runs", 3, "--min-secs", 0]


@pytest.fixture(scope="module")
def eval_subset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    for label in ("3", "7"):
        shutil.copytree(ROOT / "eval_data" / label, folder / label,
                        ignore=lambda _, names: sorted(names)[10:])
    return folder


def test_every_json_output_is_strict_and_versioned(reference_build, eval_subset, tmp_path):
    evaluated = strict_json(cli("eval", reference_build, "--data", eval_subset, "--json").stdout, "eval")
    identical = [r for r in evaluated["rows"] if r["artifact"] == evaluated["reference"]][0]
    assert identical["sqnr_db"] is None  # +inf (the reference against itself) is null, as the docs say
    assert all("seconds" not in row for row in evaluated["rows"])  # timings would make reports differ run to run
    checked = strict_json(cli("check", reference_build, "--data", eval_subset, "--json").stdout, "check")
    assert {r["rule"] for r in checked["rules"]} >= {"max-drop", "min-agreement"}
    benched = strict_json(cli("bench", reference_build / "model_int8.tflite", *QUICK, "--json").stdout, "bench")
    assert benched["rows"][0]["artifact"] == "model_int8.tflite"
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = set(next((line.split(":")[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    if "avx2" in flags:  # the CPU and the features that select the int8 kernels
        assert "x86_64: AVX2" in benched["rows"][0]["cpu"]
        assert ("AVX-512 VNNI" in benched["rows"][0]["cpu"]) == ("avx512_vnni" in flags)
    inspected = strict_json(cli("inspect", REFERENCE_MODEL, "--json").stdout, "inspect")
    assert inspected["macs"] > 0
    analyzed = strict_json(cli("analyze", reference_build, "--data", eval_subset, "--max-images", 8, "--json").stdout,
                           "analyze")
    assert set(analyzed["layers"]) == {"model_int8.tflite", "model_int8.onnx"}
    manifest = json.loads((reference_build / "manifest.json").read_text(), parse_constant=pytest.fail)
    assert manifest["schema"] == 2


def test_report_files_get_the_modes_the_umask_gives(reference_build, eval_subset, tmp_path):
    old = os.umask(0o022)
    try:
        result = cli("check", reference_build, "--data", eval_subset, "--report", tmp_path / "r.json",
                     "--junit-xml", tmp_path / "r.xml", "--max-drop", 100, "--min-agreement", 0)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    for name in ("r.json", "r.xml"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    strict_json((tmp_path / "r.json").read_text(), "check")
    cases = ElementTree.parse(tmp_path / "r.xml").getroot().findall("testcase")
    assert {case.get("classname") for case in cases} == {"model_int8_tflite", "model_int8_onnx"}  # no dots
    assert all(float(case.get("time")) > 0 for case in cases)


def test_old_spellings_still_work_with_a_warning(reference_build, eval_subset, tmp_path):
    old_json = cli("check", reference_build, "--data", eval_subset, "--json", tmp_path / "old.json",
                   "--max-drop", 100, "--min-agreement", 0)
    assert old_json.exit_code == 0, old_json.output
    assert "check --json FILE is now --report FILE" in old_json.stderr
    strict_json((tmp_path / "old.json").read_text(), "check")
    old_batch = cli("bench", reference_build / "model_int8.tflite", *QUICK, "--batch", 2, "--json")
    assert old_batch.exit_code == 0, old_batch.output
    assert "--batch is now --batch-size" in old_batch.stderr
    assert strict_json(old_batch.stdout, "bench")["settings"]["batch_size"] == 2


def test_a_renamed_option_hands_its_value_to_the_new_one():
    @click.command()
    @click.option("--new", type=int, default=1)
    @click.option("--old", cls=Renamed, type=int, new="--new", target="new")
    @click.pass_context
    def command(ctx, new):
        click.echo(f"value {renamed(ctx, 'new', new)}")

    runner = CliRunner()
    assert runner.invoke(command, ["--new", "5"]).stdout == "value 5\n"
    old = runner.invoke(command, ["--old", "7"])
    assert old.stdout == "value 7\n" and "--old is now --new" in old.stderr
    assert "--old" not in runner.invoke(command, ["--help"]).stdout


def test_progress_logs_each_step_when_stderr_is_a_log(tmp_path, monkeypatch):
    log = tmp_path / "ci.log"
    with open(log, "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        with Progress(enabled=True, interval=0) as progress:
            for done in range(101):
                progress.update("read images", done, 100)
            progress.update("export", 0, 1)
    lines = log.read_text().splitlines()
    assert all(PROGRESS_LINE.match(line) for line in lines), lines
    texts = [PROGRESS_LINE.sub("", line) for line in lines]
    assert texts[0] == "read images ..." and texts[-1].startswith("export: done in ")
    assert texts[-3].startswith("read images: done in ") and texts[-2] == "export ..."
    assert 1 <= sum("left" in text for text in texts) <= 10  # at most one line a tenth of the way


def test_progress_is_silent_when_disabled(tmp_path, monkeypatch):
    log = tmp_path / "ci.log"
    with open(log, "w") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        with Progress(enabled=False) as progress:
            progress.update("read images", 1, 2)
    assert log.read_text() == ""


def test_the_manifest_matches_its_published_schema(reference_build):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "docs" / "manifest.schema.json").read_text())
    manifest = json.loads((reference_build / "manifest.json").read_text())
    jsonschema.validate(manifest, schema)
    manifest["files"][0]["path"] = "/etc/passwd"  # the schema, like the reader, refuses unknown keys
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, schema)


def test_json_on_stdout_only(reference_build, eval_subset):
    result = cli("eval", reference_build, "--data", eval_subset, "--json")
    assert result.exit_code == 0 and result.stderr == ""  # no progress log mixed into a machine's output
    strict_json(result.stdout, "eval")


def test_tables_fit_80_columns_without_folding_names():
    from rich.console import Console

    from mobiledeploy.cli.console import fitted_table

    columns = ["artifact", "runtime", "median", "p90", "p99", "std", "peak MB", "GMAC/s", "vs float"]
    rows = [["model_int8_with_a_long_name.tflite", "ONNX Runtime", "0.017", "0.018", "0.020", "0.001", "130.2",
             "3.1", "2.29x"], ["model_float.tflite", "LiteRT", "0.039", "0.065", "0.070", "0.004", "128.0", "1.4",
                               "1.00x"]]
    for width in (80, 60, 200):
        console = Console(width=width, record=True, file=open(os.devnull, "w"))
        console.print(fitted_table(console, "bench", columns, rows, names=("runtime",),
                                   optional=("std", "p99", "peak MB", "GMAC/s", "p90")))
        lines = console.export_text().splitlines()
        assert max(len(line) for line in lines) <= width, "\n".join(lines)
        text = "\n".join(lines)
        assert ("not shown at" in text) == (width < 120)
        assert "2.29x" in text and "0.017" in text  # the columns not named optional stay readable
        if width >= 80:  # names never fold while the rest can give way
            assert "model_int8_with_a_long_name.tflite" in text and "ONNX Runtime" in text


def test_piped_output_is_as_wide_as_columns_says(monkeypatch):
    from mobiledeploy.cli.console import make_console

    monkeypatch.setenv("COLUMNS", "132")
    assert make_console().width == 132
    monkeypatch.delenv("COLUMNS")
    assert make_console().width == 80  # not a fixed 110 that wraps an 80-column log


def test_the_python_api_leaves_process_state_alone(tmp_path):
    """Importing mobiledeploy and reading images sets no environment variable and leaves Pillow's
    own decompression limit as it was."""
    from conftest import write_images

    write_images(tmp_path / "images", 2, seed=0)
    script = ("import os, sys; before = dict(os.environ); import PIL.Image; limit = PIL.Image.MAX_IMAGE_PIXELS\n"
              "import mobiledeploy\n"
              "from mobiledeploy.data import images; from mobiledeploy.reports import Preprocessing\n"
              "[images.load_image(p, Preprocessing(24, 24, 3, 'mobilenet')) for p in images.list_images(sys.argv[1])]\n"
              "print(dict(os.environ) == before, PIL.Image.MAX_IMAGE_PIXELS == limit, 'tensorflow' in sys.modules)")
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "images")], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.stdout.split() == ["True", "True", "False"], run.stderr[-2000:]
