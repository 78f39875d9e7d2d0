"""Dithered copies of the first conv's linear channels: the chain is found, only linear channels
are copied, the float function is kept, the first tensor's int8 rounding reaches the next
layers with less error, and a build records the copies and stays analyzable."""

import json

import numpy as np
import pytest

from mobiledeploy.passes.dither import MAX_CHANGE, MAX_COPIES, dither_first_layer, find_chain
from mobiledeploy.passes.refine import fake_quantize


def _model(depth_multiplier: int = 1, channels: int = 6):
    """conv -> ReLU6 -> depthwise -> ReLU6 -> 1x1 conv -> pool -> softmax. Channels 0 and 1 of
    the first conv stay inside (0, 6) and dominate what reaches the 1x1 conv; channel 2
    saturates, channel 3 never turns on, channels 4 and up cross zero."""
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(channels, 3, padding="same", name="a")(inputs)
    x = keras.layers.ReLU(6.0, name="a_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=depth_multiplier, name="b")(x)
    x = keras.layers.ReLU(6.0, name="b_relu")(x)
    x = keras.layers.Conv2D(4, 1, name="c")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 1.0, (3, 3, 3, channels)).astype(np.float32)
    bias = np.zeros(channels, np.float32)
    kernel[..., :2] *= 0.15  # |z - 3| stays well under 3 for inputs in [-1, 1]
    bias[:2] = 3.0
    kernel[..., 2] *= 10.0  # clips at 6 and at 0
    bias[3] = -100.0  # never on
    model.get_layer("a").set_weights([kernel, bias])
    depthwise = rng.normal(0, 1, (3, 3, channels, depth_multiplier)).astype(np.float32)
    model.get_layer("b").set_weights([depthwise, np.full(channels * depth_multiplier, 3.0, np.float32)])
    pointwise = rng.normal(0, 0.1, (1, 1, channels * depth_multiplier, 4)).astype(np.float32)
    pointwise[:, :, :2] *= 10  # the linear channels are the ones whose noise matters downstream
    model.get_layer("c").set_weights([pointwise, np.zeros(4, np.float32)])
    # small enough that the softmax does not saturate: the copies go where rounding changes the output
    model.get_layer("probs").set_weights([rng.normal(0, 0.05, (4, 5)).astype(np.float32), np.zeros(5, np.float32)])
    return model


def _images(count: int = 32, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (count, 16, 16, 3)).astype(np.float32)


def test_chain_is_the_first_conv_its_depthwise_and_pointwise():
    assert find_chain(_model()) == ("a", "a_relu", "b", "c")
    assert find_chain(_model(depth_multiplier=2)) is None  # a copy would need its own multiplier's worth


def _kept(model, dithered) -> float:
    """Largest change of the outputs on images the copies were not chosen on, relative to max |output|."""
    fresh = _images(16, seed=7)
    before, after = np.asarray(model(fresh)), np.asarray(dithered(fresh))
    return float(np.max(np.abs(after - before)) / np.max(np.abs(before)))


def test_only_linear_channels_are_copied_and_the_function_is_kept():
    model, calib = _model(), _images()
    dithered, report = dither_first_layer(model, calib)
    assert report.channels == (0, 1) and report.copies == (2, 2) and report.of == 6
    assert dithered.get_layer("a").get_weights()[0].shape == (3, 3, 3, 8)
    assert dithered.get_layer("c").get_weights()[0].shape == (1, 1, 8, 4)
    # the shifts of a channel's copies add up to zero, so even the zero padding at the borders
    # leaves their mean exact: float rounding only (a copy shifted by half a step alone is off
    # by about 1e-3 there)
    assert _kept(model, dithered) < 1e-4
    assert report.max_change <= MAX_CHANGE and report.added_macs == 2 * (27 + 9 + 4) * 16 * 16
    assert report.duplicates == ()  # 6 + 2 channels: already a whole block



def test_spare_channels_hold_copies_without_adding_any():
    model, calib = _model(), _images()
    dithered, report = dither_first_layer(model, calib, grow=False)  # --dither spare
    # channel 3 never turns on: the only slot, so one of the linear channels gets a second copy
    assert report.reused == (3,) and sum(report.copies) - len(report.copies) == 1 and report.added_macs == 0
    assert report.channels_after == 6 and report.duplicates == ()
    assert [w.shape for w in dithered.get_weights()] == [w.shape for w in model.get_weights()]
    # channel 3 left the depthwise layer's ReLU6 a constant 3, which the 1x1 conv's bias now adds
    assert _kept(model, dithered) < 1e-4
    fresh = _images(32, seed=3)
    assert _first_tensor_error(dithered, fresh) < 0.9 * _first_tensor_error(model, fresh)


def test_a_channel_whose_depthwise_filter_never_turns_on_is_spare_too():
    model = _model()
    kernel, bias = model.get_layer("b").get_weights()
    bias[4] = -100.0  # channel 4 of the first conv turns on, but nothing of it reaches the 1x1 conv
    model.get_layer("b").set_weights([kernel, bias])
    dithered, report = dither_first_layer(model, _images(), grow=False)
    assert report.reused == (3, 4) and report.copies == (2, 2) and report.channels == (0, 1)
    assert _kept(model, dithered) < 1e-4


def test_without_a_spare_channel_spare_copies_nothing():
    model = _model()
    kernel, bias = model.get_layer("a").get_weights()
    bias[3] = 0.0  # channel 3 now turns on where its input does
    model.get_layer("a").set_weights([kernel, bias])
    same, report = dither_first_layer(model, _images(), grow=False)
    assert report is None and same is model


def test_a_channel_that_only_stayed_off_on_the_calibration_images_is_no_spare():
    model, calib = _model(), _images()
    kernel, bias = model.get_layer("a").get_weights()
    # channel 3 now turns on only where its input matches its kernel's signs almost everywhere:
    # random images never get there, but an input in the calibrated range can
    bias[3] = -0.9 * float(np.abs(kernel[..., 3]).sum())
    model.get_layer("a").set_weights([kernel, bias])
    probe_max = max(float(np.max(np.asarray(model.get_layer("a")(calib[i:i + 8]))[..., 3])) for i in range(0, 32, 8))
    assert probe_max < 0  # off on every calibration image
    same, report = dither_first_layer(model, calib, grow=False)
    assert report is None and same is model

def test_the_block_is_filled_with_more_copies_of_the_costliest_channels():
    model = _model(channels=11)  # 11 + 5 = 16: five copies to share between channels 0 and 1
    kernel, bias = model.get_layer("c").get_weights()
    kernel[:, :, 1] *= 3  # channel 1's rounding now costs the output several times channel 0's
    model.get_layer("c").set_weights([kernel, bias])
    dithered, report = dither_first_layer(model, _images())
    assert report.channels == (0, 1) and report.copies[1] > report.copies[0] >= 2 and sum(report.copies) == 7
    assert report.duplicates == () and dithered.get_layer("a").get_weights()[0].shape[-1] == 16
    assert _kept(model, dithered) < 1e-4


def test_exact_copies_fill_what_the_copies_leave_of_the_block():
    model = _model(channels=9)  # 9 + 7 = 16, but a channel gets at most MAX_COPIES copies
    dithered, report = dither_first_layer(model, _images())
    assert report.copies == (MAX_COPIES, MAX_COPIES) and report.duplicates == (2,)  # 9 + 3 + 3 + 1
    assert dithered.get_layer("a").get_weights()[0].shape[-1] == 16
    assert _kept(model, dithered) < 1e-4


def _first_tensor_error(model, images: np.ndarray) -> float:
    """Power of the error that int8 rounding of the first conv's ReLU output alone causes at the
    1x1 conv's output (everything else float)."""
    import keras

    head = keras.Model(model.inputs[0], model.get_layer("a_relu").output)
    tail_input = keras.Input(head.output.shape[1:])
    x = tail_input
    for name in ("b", "b_relu", "c"):
        x = model.get_layer(name)(x)
    tail = keras.Model(tail_input, x)
    act = np.asarray(head(images))
    exact, rounded = np.asarray(tail(act)), np.asarray(tail(fake_quantize(act, 0.0, float(act.max()))))
    return float(np.mean((rounded - exact) ** 2))


def test_copies_cut_the_first_tensors_rounding_error():
    model, calib = _model(), _images()
    fresh = _images(32, seed=3)
    plain = _first_tensor_error(model, fresh)
    two = _first_tensor_error(dither_first_layer(model, calib)[0], fresh)
    # two copies half a step apart: their mean's noise power is a quarter of one copy's
    assert two < 0.5 * plain
    wide = _model(channels=10)  # 10 + 6 = 16: four copies of each linear channel, a quarter step apart
    dithered, report = dither_first_layer(wide, calib)
    assert report.copies == (4, 4)
    four = _first_tensor_error(dithered, fresh) / _first_tensor_error(wide, fresh)
    assert four < 0.5 * two / plain  # 1/16 of the noise power where two copies leave 1/4


def test_wide_first_layers_are_copied_only_when_asked():
    model, calib = _model(channels=16), _images()
    same, report = dither_first_layer(model, calib)  # 16 + 2 copies, padded to 24: not free any more
    assert report is None and same is model
    dithered, report = dither_first_layer(model, calib, max_channels=None)  # --dither on
    assert report.channels == (0, 1) and dithered.get_layer("a").get_weights()[0].shape[-1] == 24


def test_nothing_is_copied_without_linear_channels():
    model = _model()
    kernel, bias = model.get_layer("a").get_weights()
    model.get_layer("a").set_weights([kernel * 10, bias])  # every channel now reaches 0 or 6
    same, report = dither_first_layer(model, _images())
    assert report is None and same is model


@pytest.fixture(scope="module")
def dither_model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dither") / "dither.keras"
    _model().save(path)
    return path


def test_build_records_the_copies_and_analyze_reads_them(dither_model_file, calib_folder, tmp_path):
    import mobiledeploy
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "build"
    result = mobiledeploy.quantize(dither_model_file, calib_folder, out, num_calib=40, num_holdout=10,
                                   preprocess="mobilenet", dither="auto")
    entry = json.loads((out / "manifest.json").read_text())["dither"]
    assert result.dither is not None and entry["channels"] == list(result.dither.channels)
    assert entry["reference"]["file"] == "model_dithered.keras" and (out / "model_dithered.keras").is_file()
    shapes = [tuple(t["shape"]) for t in Interpreter(str(out / "model_int8.tflite")).get_tensor_details()]
    channels = 6 + sum(entry["copies"]) - len(entry["copies"]) + len(entry["duplicates"])
    assert (1, 16, 16, channels) in shapes  # the int8 file has the copies
    layers = mobiledeploy.analyze_build(out, calib_folder, max_images=8)
    for rows in layers.layers.values():  # each int8 file's copies compared with the dithered model's tensor
        assert any(row.layer == "a_relu" and row.sqnr_db > 20 for row in rows)

    plain = tmp_path / "plain"  # off: no copies at all
    mobiledeploy.quantize(dither_model_file, calib_folder, plain, num_calib=40, num_holdout=10,
                          preprocess="mobilenet", dither="off")
    assert json.loads((plain / "manifest.json").read_text())["dither"] is None
    assert not (plain / "model_dithered.keras").exists()


def test_auto_leaves_per_tensor_builds_alone_and_on_copies(dither_model_file, calib_folder, tmp_path):
    import mobiledeploy

    auto = mobiledeploy.quantize(dither_model_file, calib_folder, tmp_path / "auto", num_calib=40, num_holdout=10,
                                 preprocess="mobilenet", per_channel=False, dither="auto")
    forced = mobiledeploy.quantize(dither_model_file, calib_folder, tmp_path / "on", num_calib=40, num_holdout=10,
                                   preprocess="mobilenet", per_channel=False, dither="on")
    assert auto.dither is None and forced.dither is not None
    assert set(forced.dither.channels) <= {0, 1} and sum(forced.dither.copies) - len(forced.dither.copies) == 2


def test_the_default_build_puts_copies_in_spare_channels_and_keeps_the_layer_shapes(dither_model_file, calib_folder,
                                                                                     tmp_path):
    import mobiledeploy
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "spare"
    result = mobiledeploy.quantize(dither_model_file, calib_folder, out, num_calib=40, num_holdout=10,
                                   preprocess="mobilenet")  # --dither spare is the default
    entry = json.loads((out / "manifest.json").read_text())["dither"]
    assert entry["reused"] == [3] and entry["added_macs"] == 0 and result.dither.channels_after == 6
    shapes = {tuple(t["shape"]) for t in Interpreter(str(out / "model_int8.tflite")).get_tensor_details()}
    assert (1, 16, 16, 6) in shapes and (1, 16, 16, 7) not in shapes and (1, 16, 16, 8) not in shapes
