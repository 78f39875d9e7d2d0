"""Which Keras 2 MobileNets load: a sweep of the shapes people save with tf-keras.

    python benchmarks/keras2_models.py [--work /tmp/mobiledeploy-keras2]

MobileNet v1 (alpha 0.25, 48x48) and v2 (alpha 0.35, 40x40), each saved by tf-keras as .h5 and
as a SavedModel, in five shapes: the whole keras.applications model (include_top, 5 classes);
a nested base called as one layer; a Sequential around the base; preprocess_input (TFOpLambda
x/127.5 - 1) before the base; and the base's layers with a head added inline. Each but the
first with four heads: softmax over 5 or 2 classes, Dense(1) sigmoid, Dense(1) logit. BatchNorm
statistics are seeded at random, so folding has something to prove. For every file: does
``load_model`` read it, do its outputs match tf-keras' on the same inputs (max |diff| <= 1e-4),
and which head (heads.py) it is read with. Needs tf-keras (the dev extra). ~5 minutes.
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path

import numpy as np

SHAPES = ["top", "nested", "sequential", "preprocess_input", "inline"]
HEADS = {"softmax5": (5, "softmax"), "softmax2": (2, "softmax"), "sigmoid1": (1, "sigmoid"), "logit1": (1, None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mobiledeploy-keras2"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    print(f"{'model':<40}{'result':<12}{'head':<10}")
    loaded_ok = total = 0
    for arch, shape, head, fmt in itertools.product(["v1", "v2"], SHAPES, HEADS, ["h5", "savedmodel"]):
        if shape == "top" and head != "softmax5":
            continue
        name = f"{arch}_{shape}_{head}_{fmt}"
        result, kind = _check(arch, shape, head, fmt, args.work / name, rng)
        total += 1
        loaded_ok += result == "ok"
        print(f"{name:<40}{result:<12}{kind:<10}", flush=True)
    print(f"{loaded_ok} of {total} load with tf-keras' outputs")


def _check(arch: str, shape: str, head: str, fmt: str, path: Path, rng) -> tuple[str, str]:
    import tf_keras

    from mobiledeploy.errors import MobiledeployError
    from mobiledeploy.model.heads import head_of
    from mobiledeploy.model.loading import load_model

    tf_keras.backend.clear_session()
    model, size = _build(tf_keras, arch, shape, head)
    for layer in _all_layers(tf_keras, model):
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 2, w.shape) for w in layer.get_weights()])
    if fmt == "h5":
        path = path.with_suffix(".h5")
        model.save(path)
    else:
        model.save(path, save_format="tf")
    x = rng.uniform(0, 255 if shape == "preprocess_input" else 1, (2, size, size, 3)).astype("float32")
    try:
        loaded = load_model(path).model
    except MobiledeployError as exc:
        return "refused", str(exc)[:60]
    diff = float(np.max(np.abs(np.asarray(loaded(x)) - model(x, training=False).numpy())))
    return ("ok" if diff <= 1e-4 else f"off {diff:.1e}"), head_of(loaded).kind


def _build(tf_keras, arch: str, shape: str, head: str):
    apps = tf_keras.applications
    application, alpha, size = (apps.MobileNet, 0.25, 48) if arch == "v1" else (apps.MobileNetV2, 0.35, 40)
    units, activation = HEADS[head]
    if shape == "top":
        return application(alpha=alpha, input_shape=(size, size, 3), weights=None, classes=units), size
    pooled = application(alpha=alpha, input_shape=(size, size, 3), include_top=False, weights=None, pooling="avg")
    dense = tf_keras.layers.Dense(units, activation=activation)
    if shape == "sequential":
        return tf_keras.Sequential([tf_keras.Input((size, size, 3)), pooled, tf_keras.layers.Dropout(0.2), dense]), size
    if shape == "inline":
        return tf_keras.Model(pooled.input, dense(pooled.output)), size
    inputs = tf_keras.Input((size, size, 3))
    if shape == "preprocess_input":
        preprocess = (apps.mobilenet if arch == "v1" else apps.mobilenet_v2).preprocess_input
        return tf_keras.Model(inputs, dense(pooled(preprocess(inputs)))), size
    return tf_keras.Model(inputs, dense(pooled(inputs, training=False))), size  # nested


def _all_layers(tf_keras, model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, tf_keras.Model):
            yield from _all_layers(tf_keras, layer)


if __name__ == "__main__":
    main()
