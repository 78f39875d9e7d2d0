import numpy as np
import pytest
from PIL import Image

from conftest import write_images
from mobiledeploy.data.calibration import DecodedBatches, iter_batches, preprocessing_for, scan, scale
from mobiledeploy.data.images import load_image
from mobiledeploy.errors import CalibrationError
from mobiledeploy.reports import Preprocessing

PRE = Preprocessing(24, 24, 3, "mobilenet")


def test_folder_is_searched_recursively_and_split_without_overlap(calib_folder):
    cset = scan(calib_folder, PRE, num_calib=30, num_holdout=15, seed=0)
    assert cset.candidates == 50 and len(cset.calib) == 30 and len(cset.holdout) == 15
    assert not set(cset.calib) & set(cset.holdout)
    assert any("nested" in f for f in cset.calib + cset.holdout)


def test_seed_makes_selection_deterministic(calib_folder):
    a = scan(calib_folder, PRE, 20, 5, seed=7)
    b = scan(calib_folder, PRE, 20, 5, seed=7)
    c = scan(calib_folder, PRE, 20, 5, seed=8)
    assert a == b and a.calib != c.calib
    first = np.concatenate(list(iter_batches(a, "calib", 8)))
    second = np.concatenate(list(iter_batches(b, "calib", 8)))
    assert np.array_equal(first, second)


def test_batches_are_streamed_preprocessed_and_shaped(calib_folder):
    cset = scan(calib_folder, PRE, 20, 0, seed=0)
    batches = list(iter_batches(cset, "calib", 8))
    assert [len(b) for b in batches] == [8, 8, 4]
    assert batches[0].shape == (8, 24, 24, 3) and batches[0].dtype == np.float32
    assert batches[0].min() >= -1.0 and batches[0].max() <= 1.0 and batches[0].min() < -0.2


def test_a_set_read_whole_is_decoded_once_within_the_budget(tmp_path):
    """The images deleted after a whole pass, the next pass still gets the same batches (read-only:
    every pass shares them); a pass stopped early, or a set over the budget, keeps nothing."""
    import shutil

    def fresh(name):
        write_images(tmp_path / name, 12, size=24)
        return tmp_path / name, scan(tmp_path / name, PRE, 8, 4, seed=0)

    folder, cset = fresh("kept")
    batches = DecodedBatches(cset, 3)
    first = [b.copy() for b in batches("calib")]
    held = list(batches("holdout"))
    shutil.rmtree(folder)
    again = list(batches("calib"))
    assert [len(b) for b in again] == [3, 3, 2] and all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not again[0].flags.writeable and np.array_equal(np.concatenate(held), np.concatenate(list(batches("holdout"))))
    for budget, read in ((1 << 30, lambda b: next(b("calib"))), (1000, lambda b: list(b("calib")))):
        folder, cset = fresh(f"not-kept-{budget}")
        batches = DecodedBatches(cset, 3, budget=budget)
        read(batches)
        shutil.rmtree(folder)
        with pytest.raises(CalibrationError):  # decoded again: the files are gone
            list(batches("calib"))


def test_scalings():
    pixels = np.array([0.0, 127.5, 255.0], np.float32)
    assert scale(pixels, PRE).tolist() == [-1.0, 0.0, 1.0]
    assert scale(pixels, Preprocessing(1, 1, 3, "unit")).tolist() == [0.0, 0.5, 1.0]
    assert scale(pixels, Preprocessing(1, 1, 3, "raw")).tolist() == [0.0, 127.5, 255.0]


def test_resize_shorter_side_and_center_crop(tmp_path):
    # a 100x50 image: left half black, right half white; the center crop straddles both
    pixels = np.zeros((50, 100, 3), np.uint8)
    pixels[:, 50:] = 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    out = load_image(tmp_path / "wide.png", Preprocessing(20, 20, 3, "raw", crop_fraction=1.0))
    assert out.shape == (20, 20, 3)
    assert out[:, :8].max() < 30 and out[:, 12:].min() > 225


def test_greyscale_and_palette_images_become_rgb(tmp_path):
    write_images(tmp_path, 2, mode="L")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).convert("P").save(tmp_path / "pal.png")
    for path in sorted(tmp_path.glob("*.png")):
        assert load_image(path, PRE).shape == (24, 24, 3)


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    write_images(tmp_path, 5)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    cset = scan(tmp_path, PRE, 10, 0, seed=0)
    assert len(cset.calib) == 5 and len(cset.skipped) == 1
    assert cset.skipped[0][0].endswith("broken.jpg") and "unreadable image" in cset.skipped[0][1]


def test_empty_or_useless_sources_are_errors(tmp_path):
    with pytest.raises(CalibrationError, match="no images found"):
        scan(tmp_path, PRE, 10)
    (tmp_path / "a.png").write_bytes(b"garbage")
    with pytest.raises(CalibrationError, match="none of the 1 images could be read"):
        scan(tmp_path, PRE, 10)
    with pytest.raises(CalibrationError, match="not found"):
        scan(tmp_path / "missing", PRE, 10)


def test_arrays(tmp_path):
    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, (12, 24, 24, 3)).astype(np.uint8)
    np.save(tmp_path / "good.npy", good)
    cset = scan(tmp_path / "good.npy", PRE, 8, 4, seed=1)
    batch = np.concatenate(list(iter_batches(cset, "calib", 3)))
    np.testing.assert_allclose(batch, good[list(cset.calib)] / 127.5 - 1, atol=1e-6)
    np.savez(tmp_path / "good.npz", x=good, y=np.arange(12))
    assert len(scan(tmp_path / "good.npz", PRE, 8).calib) == 8

    np.save(tmp_path / "wrong.npy", good[:, :20])
    with pytest.raises(CalibrationError, match=r"shape \(12, 20, 24, 3\); expected \(N, 24, 24, 3\)"):
        scan(tmp_path / "wrong.npy", PRE, 8)
    bad = good.astype(np.float32)
    bad[5, 1, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(CalibrationError, match="sample 5 contains NaN or Inf"):
        scan(tmp_path / "nan.npy", PRE, 8)
    np.savez(tmp_path / "nox.npz", images=good, labels=np.arange(12))
    with pytest.raises(CalibrationError, match="no 'x'"):
        scan(tmp_path / "nox.npz", PRE, 8)


def test_auto_preprocessing_detects_rescaling_in_the_model():
    import keras

    inputs = keras.Input((16, 16, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    scaled = keras.Model(inputs, keras.layers.Conv2D(2, 3)(keras.layers.Rescaling(1 / 255)(inputs)))
    assert preprocessing_for(plain).scaling == "mobilenet"
    auto = preprocessing_for(scaled)
    assert auto.scaling == "raw" and auto.scaling_in_model and (auto.height, auto.width) == (16, 16)
