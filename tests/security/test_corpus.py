"""Every malformed input of tests/security/corpus.py through the real CLI: promises 2 and 3 of issue 7.

error cases: exit 1 (bad input) or 2 (bad usage), a clear message, no traceback, and no file
written anywhere (no output folder, no leftover staging folder). ok cases: handled.
"""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import messages
from corpus import build
from mobiledeploy.cli.main import main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_model_file):
    root = tmp_path_factory.mktemp("corpus")
    return root, build(root, tiny_model_file)


def _cases():
    # the case list is data; build it once in a scratch dir just to parametrize by name
    import tempfile

    from conftest import build_tiny_mobilenet

    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "tiny.keras"
        build_tiny_mobilenet().save(model)
        return [c["name"] for c in build(Path(scratch) / "c", model)]


CASES = _cases()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", CASES)
def test_corpus_case(corpus, name, tiny_model_file, calib_folder, reference_build, tmp_path):
    root, cases = corpus
    spec = next(c for c in cases if c["name"] == name)
    out = tmp_path / "out"
    fill = {"{corpus}": str(root), "{model}": str(tiny_model_file), "{calib}": str(calib_folder),
            "{build}": str(reference_build), "{out}": str(out)}
    args = []
    for arg in spec["args"]:
        for key, value in fill.items():
            arg = arg.replace(key, value)
        args.append(arg)
    before = _files(root), _files(tmp_path), _files(reference_build)
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    text = result.output
    assert "Traceback" not in text
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    if spec["expect"] == "ok":
        assert result.exit_code == 0, text
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["calibration"]["skipped"] == 1  # the one corrupt JPEG, counted and named
        return
    assert result.exit_code in (1, 2), f"exit {result.exit_code}: {text} {result.exception!r}"
    if result.exit_code == 1:
        lines = messages(text)
        assert len(lines) == 1 and lines[0].startswith("error: "), text
    else:
        assert "Error:" in text
    assert spec["message"] in text
    assert (_files(root), _files(tmp_path), _files(reference_build)) == before  # nothing written or left over
