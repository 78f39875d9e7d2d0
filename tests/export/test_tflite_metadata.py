"""TFLite metadata (--metadata, --labels): written as TFLite's metadata tools lay it out, read back,
and invisible to the runtime: the file still loads and computes the same."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from conftest import REFERENCE_MODEL, ROOT, cli, messages


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory, tiny_model):
    import tensorflow as tf

    from mobiledeploy.quiet import captured_output

    with captured_output():
        content = tf.lite.TFLiteConverter.from_keras_model(tiny_model).convert()
    path = tmp_path_factory.mktemp("metadata") / "tiny.tflite"
    path.write_bytes(content)
    return path


def _outputs(path, x):
    from mobiledeploy.runtime.runners import open_runner

    return open_runner(path).run(x)


def test_metadata_round_trips_and_the_runtime_ignores_it(tiny_tflite, tmp_path):
    from tensorflow.lite.python import schema_py_generated as schema

    from mobiledeploy.export.tflite_metadata import IDENTIFIER, METADATA_NAME, RGB, Metadata, embed, read

    path = tmp_path / "model.tflite"
    path.write_bytes(tiny_tflite.read_bytes())
    assert read(path) is None
    written = Metadata("tiny", "a test model", (127.5,) * 3, (127.5,) * 3, RGB, 24, 24,
                       tuple(f"class {i}" for i in range(6)))
    embed(path, written)
    embed(path, written)  # again: replaces, does not pile up
    assert read(path) == written
    content = path.read_bytes()
    model = schema.Model.GetRootAsModel(content, 0)
    names = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    assert names.count(METADATA_NAME) == 1
    buffer = model.Buffers(model.Metadata(names.index(METADATA_NAME)).Buffer()).DataAsNumpy().tobytes()
    assert buffer[4:8] == IDENTIFIER  # the flatbuffer file identifier the metadata tools check
    with zipfile.ZipFile(io.BytesIO(content)) as files:  # the labels ride in a zip after the model
        assert files.namelist() == ["labels.txt"]
        assert files.read("labels.txt").decode().splitlines() == list(written.labels)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 24, 24, 3)).astype(np.float32)
    np.testing.assert_array_equal(_outputs(path, x), _outputs(tiny_tflite, x))


def test_metadata_without_labels_has_no_archive(tiny_tflite, tmp_path):
    from mobiledeploy.export.tflite_metadata import GRAYSCALE, Metadata, embed, read

    path = tmp_path / "model.tflite"
    path.write_bytes(tiny_tflite.read_bytes())
    written = Metadata("tiny", "", (0.0,), (255.0,), GRAYSCALE, 24, 24)
    embed(path, written)
    assert read(path) == written
    assert not zipfile.is_zipfile(path)


@pytest.mark.parametrize("args, expected", [
    (["--labels", ROOT / "eval_data"], "add --metadata"),
    (["--metadata", "--labels", "three.txt"], "3 class names, but the model has 10 outputs"),
    (["--metadata", "--labels", "missing.txt"], "missing or not a regular file"),
])
def test_labels_that_do_not_fit_are_refused_before_any_work(tmp_path, args, expected):
    (tmp_path / "three.txt").write_text("cat\ndog\nbird\n")
    args = [tmp_path / a if str(a).endswith(".txt") else a for a in args]
    result = cli("quantize", REFERENCE_MODEL, "--calib", ROOT / "calibration_data", "-o", tmp_path / "b", *args)
    assert result.exit_code == 1
    (line,) = messages(result.output)
    assert expected in line
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_build_with_metadata_carries_the_labels_and_normalization(tmp_path):
    from mobiledeploy import manifest
    from mobiledeploy.export.tflite_metadata import read

    out = tmp_path / "build"
    result = cli("quantize", REFERENCE_MODEL, "--calib", ROOT / "calibration_data", "-o", out, "--metadata",
                 "--labels", ROOT / "eval_data", "--num-calib", "32", "--num-holdout", "0")
    assert result.exit_code == 0, result.output
    recorded = manifest.read(out)  # the checksums are of the files with their metadata
    for artifact in (a for a in recorded.files if a.format == "tflite"):
        metadata = read(out / artifact.file)
        assert metadata.labels == tuple(str(i) for i in range(10))
        assert (metadata.mean, metadata.std) == ((127.5,) * 3, (127.5,) * 3)  # x / 127.5 - 1
        assert (metadata.height, metadata.width) == (32, 32)
        assert artifact.details["metadata"]["labels"] == 10
    assert cli("eval", out, "--data", ROOT / "eval_data").exit_code == 0  # the checksums verify
