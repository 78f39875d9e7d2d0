"""Float vs int8 latency of MobileNet v1 1.0 224 and v2 1.0 224 on both runtimes, in one run.

    python benchmarks/mobilenet_latency.py [--work /tmp/md-latency] [--min-secs 2] [--threads 1 2]

Builds each model (keras.applications, seeded random weights: latency does not depend on
the weight values), quantizes it with the pipeline (and again with ``--onnx-activations uint8``,
model_int8_u8.onnx), and also with the plain converters
(TFLiteConverter full-int8; tf2onnx + ORT quantize_static per-channel QDQ) on the same
calibration images. Every file is timed by ``mobiledeploy.runtime.timing`` in its own process, side by
side in this one run, so ratios are comparable even on a noisy shared machine.

Theoretical int8 peak of this CPU: an AVX-512 VNNI ``vpdpbusd`` on zmm registers does 64
int8 multiply-adds, and cores with two 512-bit multiply pipes (Intel server cores, AMD Zen 4/5)
issue two per cycle: 128 MAC/cycle/core x the nominal clock in /proc/cpuinfo. Cores that boost
above the nominal clock (most do, under a VM too) can exceed that figure; depthwise layers
cannot use VNNI's 4-deep dot products at all, so no real network gets near the true peak.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VNNI_MACS_PER_CYCLE = 2 * 64  # two 512-bit pipes x 64 int8 multiply-adds per vpdpbusd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/mobiledeploy-latency"))
    parser.add_argument("--min-secs", type=float, default=2.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=["v1", "v2"], choices=["v1", "v2"])
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    ghz = _clock_ghz()
    print(f"int8 peak: {VNNI_MACS_PER_CYCLE} MAC/cycle/core x {ghz:.2f} GHz = "
          f"{VNNI_MACS_PER_CYCLE * ghz:.0f} GMAC/s per core (AVX-512 VNNI: {_has_vnni()})")
    calib = _calibration_folder()
    rows = []
    for name in args.models:
        rows += _bench_model(name, args.work / name, calib, args.threads, args.min_secs, ghz)
    _print(rows)


def _bench_model(name: str, work: Path, calib: Path, threads: list[int], min_secs: float, ghz: float) -> list[dict]:
    import keras

    import mobiledeploy
    from mobiledeploy.runtime import timing as bench
    from mobiledeploy.evaluation import costs
    from mobiledeploy.options import BenchSettings

    keras.utils.set_random_seed(0)
    build = keras.applications.MobileNet if name == "v1" else keras.applications.MobileNetV2
    model = build(input_shape=(224, 224, 3), weights=None)
    work.mkdir(parents=True, exist_ok=True)
    model.save(work / "model.keras")
    macs = costs.model_costs(model).macs
    started = time.perf_counter()
    mobiledeploy.quantize(work / "model.keras", calib, work / "build", num_calib=100, num_holdout=0, overwrite=True)
    print(f"{name}: {macs / 1e6:.0f}M MACs; pipeline quantize {time.perf_counter() - started:.0f} s")
    # the same build with uint8 ONNX activations, which ONNX Runtime on x86-64 fuses around residual Adds
    mobiledeploy.quantize(work / "model.keras", calib, work / "build_u8", num_calib=100, num_holdout=0,
                          overwrite=True, onnx_activations="uint8")
    from mobiledeploy.quiet import captured_output

    with captured_output():  # the converters print every captured variable
        plain = _plain_converters(model, calib, work / "plain")
    files = [(work / "build" / f, f, "ours") for f in
             ("model_float.tflite", "model_int8.tflite", "model_float.onnx", "model_int8.onnx")]
    files.append((work / "build_u8" / "model_int8.onnx", "model_int8_u8.onnx", "ours"))
    files += [(path, path.name, "plain") for path in plain]
    rows = []
    for n in threads:
        settings = BenchSettings(num_threads=n, warmup_runs=10, num_runs=50, min_secs=min_secs)
        for path, label, source in files:
            fmt = path.suffix.lstrip(".")
            r = bench.measure(path, fmt, "int8" if "int8" in label else "float32", settings)
            rows.append({"model": name, "artifact": label, "source": source, "format": fmt, "threads": n,
                         "median": r.median_ms, "p90": r.p90_ms, "gmacs": macs / (r.median_ms * 1e6),
                         "peak": VNNI_MACS_PER_CYCLE * ghz * n})
    return rows


def _plain_converters(model, calib: Path, out: Path) -> list[Path]:
    """What a user gets from the converters alone, on the same model and images."""
    import tensorflow as tf
    import tf2onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from mobiledeploy.data.calibration import preprocessing_for
    from mobiledeploy.data.images import list_images, load_image

    out.mkdir(parents=True, exist_ok=True)
    prep = preprocessing_for(model)
    images = [load_image(p, prep)[None] for p in list_images(calib)[:100]]
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x] for x in images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    (out / "plain_int8.tflite").write_bytes(converter.convert())
    spec = (tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(out / "plain_float.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter({"input": x} for x in images)

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(out / "plain_float.onnx"), str(out / "plain_int8.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)
    return [out / "plain_int8.tflite", out / "plain_int8.onnx"]


def _print(rows: list[dict]) -> None:
    print(f"\n{'model':<6}{'threads':>8}  {'artifact':<20}{'source':<7}{'median ms':>10}{'p90 ms':>9}"
          f"{'vs float':>10}{'vs plain':>10}{'GMAC/s':>9}{'% peak':>8}")
    for r in rows:
        same = [o for o in rows if (o["model"], o["threads"], o["format"]) == (r["model"], r["threads"], r["format"])]
        floats = [o for o in same if o["source"] == "ours" and "float" in o["artifact"]]
        plains = [o for o in same if o["source"] == "plain"]
        vs_float = f"{floats[0]['median'] / r['median']:.2f}x" if floats and "int8" in r["artifact"] else ""
        vs_plain = (f"{plains[0]['median'] / r['median']:.2f}x" if plains and r["source"] == "ours"
                    and "int8" in r["artifact"] else "")
        print(f"{r['model']:<6}{r['threads']:>8}  {r['artifact']:<20}{r['source']:<7}{r['median']:>10.2f}"
              f"{r['p90']:>9.2f}{vs_float:>10}{vs_plain:>10}{r['gmacs']:>9.1f}{100 * r['gmacs'] / r['peak']:>7.1f}%")
    print("vs float: float median / this median (same format, ours); vs plain: the plain converter's int8 "
          "median / ours (>= 1.00x: ours is no slower)")


def _calibration_folder() -> Path:
    shared = Path(os.environ.get("MOBILEDEPLOY_SHARED_DATA", ROOT.parent / "shared" / "data"))
    images = shared / "imagenet-dev" / "images"
    return images if images.is_dir() else ROOT / "calibration_data"


def _clock_ghz() -> float:
    from onnx_x86_kernels import cpu_field  # this folder

    mhz = cpu_field("cpu MHz")
    return float(mhz) / 1000 if mhz != "unknown" else float("nan")


def _has_vnni() -> bool:
    from onnx_x86_kernels import cpu_flags  # this folder

    return "avx512_vnni" in cpu_flags()


if __name__ == "__main__":
    main()
