"""Every --precision of the shared ImageNet MobileNet v1 0.25: size, latency and drift, side by side.

    python benchmarks/precision_modes.py [--shared ../shared/data] [--work /tmp/md-precisions] [--arm]

Builds the shared model once per precision on the fixed 200-image calibration split of
shared_imagenet_drift.py, then times every file in this one run, one thread, each in a process
of its own, the files interleaved over --rounds rounds (median of the rounds' medians): the
ratios to the int8 TFLite file are what to read, absolute times drift on a shared machine.
--arm also times the .tflite/.onnx files under emulated ARM (cortex-a76; set up by `mobiledeploy
arm setup`): emulated times rank kernels, not devices. Agreement and SQNR are on the split's 300
other images; for the cross-fitted agreement over all 500 images run

    python benchmarks/crossfit_levers.py --levers 19 20 25 21 22
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

PRECISIONS = ("int8", "int16x8", "mixed", "float16", "dynamic")
# mixed measures its budget (1 point of agreement) on held-out images: 50 come out of calibration
FIELDS = {"mixed": {"num_holdout": 50}}


def main() -> None:
    from shared_imagenet_drift import shared_split, split_arguments

    parser = split_arguments(__doc__.splitlines()[0], "/tmp/mobiledeploy-precisions")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arm", action="store_true", help="also time under emulated ARM (cortex-a76)")
    parser.add_argument("--arm-rounds", type=int, default=1, help="rounds under emulation (each file's 10 runs)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    import mobiledeploy
    from mobiledeploy.evaluation.builds import evaluate_build

    calib, evaluation, labels = shared_split(args.shared, args.work / "split", args.seed)
    model = args.shared / "models" / "mobilenet_v1_0.25_224.h5"
    files: list[tuple[str, Path, str, str]] = []  # (precision, path, format, file precision)
    quality: dict[str, dict] = {}
    for precision in PRECISIONS:
        out = args.work / precision
        fields = {"num_holdout": 0, **FIELDS.get(precision, {})}
        result = mobiledeploy.quantize(model, calib, out, num_calib=200 - fields["num_holdout"], overwrite=True,
                                       precision=precision, **fields)
        print(f"{precision}: quantize {result.seconds:.0f} s", flush=True)
        report = evaluate_build(out, evaluation, labels)
        reference = report.row(report.reference)
        for row in report.rows:
            quality[f"{precision}/{row['artifact']}"] = {**row, "top1_change": row["top1"] - reference["top1"]}
        files += [(precision, out / a.file, a.format, a.precision) for a in result.artifacts
                  if a.format != "keras" and (a.quantized or precision == "int8")]
    devices = ["cpu"] + (["arm:cortex-a76"] if args.arm else [])
    times = {device: _times(files, device, args.rounds if device == "cpu" else args.arm_rounds) for device in devices}
    _print(files, quality, times)


def _times(files, device: str, rounds: int) -> dict[Path, float]:
    """Median latency (ms) of each file on ``device``: the median of ``rounds`` interleaved runs."""
    from mobiledeploy.options import BenchSettings
    from mobiledeploy.runtime import timing

    process = None
    if device != "cpu":
        from mobiledeploy.runtime.arm.provisioning import target_for

        process = target_for(device).process()
    settings = BenchSettings.for_device(device, num_threads=1)
    samples: dict[Path, list[float]] = {}
    for round_ in range(rounds):
        for _, path, fmt, precision in files:
            report = timing.measure(path, fmt, precision, settings, process=process)
            samples.setdefault(path, []).append(report.median_ms)
        print(f"{device}: round {round_ + 1}/{rounds} timed", flush=True)
    return {path: statistics.median(values) for path, values in samples.items()}


def _print(files, quality: dict, times: dict) -> None:
    base = {device: next(t[path] for precision, path, fmt, p in files if p == "int8" and fmt == "tflite")
            for device, t in times.items()}
    header = f"{'file':<22} {'agreement':>9} {'top-1 change':>12} {'SQNR dB':>8} {'KiB':>7}"
    for device in times:
        header += f" {device + ' ms':>22} {'vs int8 tflite':>14}"
    print(header)
    for precision, path, fmt, file_precision in files:
        row = quality[f"{precision}/{path.name}"]
        line = (f"{path.name:<22} {row['agreement']:>9.1%} {100 * row['top1_change']:>+12.2f} "
                f"{row['sqnr_db']:>8.1f} {path.stat().st_size / 1024:>7.0f}")
        for device, t in times.items():
            line += f" {t[path]:>22.3f} {t[path] / base[device]:>13.2f}x"
        print(line)


if __name__ == "__main__":
    main()
