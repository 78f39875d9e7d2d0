"""The int8 ONNX file on ONNX Runtime's two x86-64 int8 kernels, side by side: the default
(uint8 x int8, fast, saturating on CPUs without VNNI) and the exact one mobiledeploy asks for
(``session.x64quantprecision``).

    python benchmarks/onnx_x86_kernels.py [--shared ../shared/data] [--work /tmp/md-x86-kernels]
        [--build BUILD --data IMAGES]

Without VNNI, the default kernel multiplies uint8 activations by int8 weights with vpmaddubsw,
which adds each pair of products into a saturating 16-bit sum; a MobileNet's ReLU6 outputs sit at
the top of their range, and the sums overflow. On a CPU with VNNI (or on ARM) both kernels are
exact and give the same outputs. By default this builds the shared ImageNet MobileNet v1 0.25 on
the fixed split (200 calibration images) and scores the other 300 against the float ONNX file:
agreement, SQNR, and for the two int8 sessions the share of outputs they compute identically.
Then it times one image on one thread, the three sessions alternated in rounds (only ratios
within one run mean something on a shared machine). ``--build`` reuses a build instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def main() -> None:
    from helpers.openvino_run import median_times  # this folder: the same alternated timing
    from shared_imagenet_drift import shared_split, split_arguments

    parser = split_arguments(__doc__.splitlines()[0], "/tmp/mobiledeploy-x86-kernels")
    parser.add_argument("--build", type=Path, help="an existing build folder (default: build the shared model)")
    parser.add_argument("--data", type=Path, help="images to score --build on")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import onnxruntime as ort

    import mobiledeploy
    from mobiledeploy.data import datasets
    from mobiledeploy.evaluation.metrics import agreement, sqnr_db
    from mobiledeploy.runtime.onnx_session import session_options
    from mobiledeploy.reports import Preprocessing

    build, data = args.build, args.data
    if build is None:
        calib, data, _ = shared_split(args.shared, args.work / "split", args.seed)
        build = args.work / "build"
        mobiledeploy.quantize(args.shared / "models" / "mobilenet_v1_0.25_224.h5", calib, build,
                              num_calib=200, num_holdout=0, overwrite=True)
    preprocessing = Preprocessing.from_dict(json.loads((build / "manifest.json").read_text())["preprocessing"])
    x = np.concatenate(list(datasets.iter_batches(datasets.open_data(data), preprocessing)))

    def session(path: Path, exact: bool):
        options = session_options() if exact else ort.SessionOptions()  # mobiledeploy's, or ORT's defaults
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    sessions = {"float ONNX": session(build / "model_float.onnx", False),
                "int8, default kernels": session(build / "model_int8.onnx", False),
                "int8, exact kernels": session(build / "model_int8.onnx", True)}
    outputs = {}
    for name, s in sessions.items():
        feed = s.get_inputs()[0].name
        outputs[name] = np.concatenate([s.run(None, {feed: x[i:i + 1]})[0] for i in range(len(x))]).reshape(len(x), -1)
    reference = outputs["float ONNX"]
    vnni = " ".join(sorted(cpu_flags() & {"avx512_vnni", "avx_vnni"})) or "none"
    print(f"CPU: {cpu_field('model name')}; VNNI: {vnni}; {len(x)} images; ONNX Runtime {ort.__version__}")
    feeds = {name: {s.get_inputs()[0].name: x[:1]} for name, s in sessions.items()}
    seconds = median_times({name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()})
    same = np.mean(np.all(outputs["int8, default kernels"] == outputs["int8, exact kernels"], axis=1))
    print(f"{'session':<24}{'agreement':>10}{'SQNR dB':>9}{'1 image ms':>12}{'vs exact':>10}")
    for name, out in outputs.items():
        print(f"{name:<24}{agreement(reference, out):>10.1%}{sqnr_db(reference, out):>9.1f}{1000 * seconds[name]:>12.3f}"
              f"{seconds['int8, exact kernels'] / seconds[name]:>9.2f}x")
    print(f"the two int8 sessions give identical outputs on {same:.1%} of the images; "
          "vs exact: the exact kernels' median time / this one (above 1.00x: faster than exact)")


def cpu_field(name: str) -> str:
    """The first CPU's ``name`` line in /proc/cpuinfo ("unknown" where there is none)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    values = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.split(":", 1)[0].strip() == name]
    return values[0] if values else "unknown"


def cpu_flags() -> set[str]:
    """The first CPU's instruction-set flags (avx2, avx512_vnni, ...)."""
    return set(cpu_field("flags").split()) - {"unknown"}


if __name__ == "__main__":
    main()
