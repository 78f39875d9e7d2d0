"""What the first layer's dithered copies (dither.py) cost and buy, side by side in one run.

    python benchmarks/dither_cost.py [--shared ../shared/data] [--model other.h5] [--dither on] [--threads 1 2] [--rounds 3]
        [--device arm:cortex-a76]

Builds the real model twice on the fixed split of shared_imagenet_drift.py (200 calibration
images), with --dither auto (--dither on for a model auto leaves alone, spare for the copies that
add no channel) and --dither off, and prints for each int8 file its median latency
(mobiledeploy.runtime.timing, the two builds' files timed in alternating rounds so that drift on this
shared machine hits both alike), the latency ratio with the range of the rounds'
own ratios (the noise), and its output SQNR and top-1 agreement against the float model on the
300 other images. --model studies another model (other_models.py) on the same images.
--device arm:CPU times the files under qemu (mobiledeploy.bench_build; emulated time, whose ratio
counts the work the ARM kernels do, not a device's latency).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def main() -> None:
    from shared_imagenet_drift import shared_split, split_arguments  # this folder: the same fixed split

    parser = split_arguments(__doc__.splitlines()[0], "/tmp/mobiledeploy-dither")
    parser.add_argument("--model", type=Path, default=None,
                        help="another model on the same images (default: the shared MobileNet v1 0.25)")
    parser.add_argument("--dither", choices=["spare", "auto", "on"], default="auto", help="the setting compared with off")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--min-secs", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds per file and thread count")
    parser.add_argument("--device", default="cpu", help="cpu, or arm:CPU to time the files under qemu emulation")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import mobiledeploy
    from mobiledeploy import manifest
    from mobiledeploy.data import datasets
    from mobiledeploy.evaluation.metrics import agreement, collect, sqnr_db
    from mobiledeploy.runtime.runners import open_runner

    model = args.model or args.shared / "models" / "mobilenet_v1_0.25_224.h5"
    calib, evaluation, labels = shared_split(args.shared, args.work / "split", args.seed)
    builds = {}
    for setting in (args.dither, "off"):
        out = args.work / f"dither-{setting}"
        result = mobiledeploy.quantize(model, calib, out, num_calib=200, num_holdout=0, overwrite=True, dither=setting)
        builds[setting] = out
        if result.dither:
            d = result.dither
            print(f"--dither {setting}: {d.layer}'s {d.of} channels -> {d.channels_after}"
                  f" ({d.counts}; {len(d.duplicates)} exact) (+{d.added_macs / 1e6:.2f}M multiply-adds per image, "
                  f"{d.seconds:.1f} s); refine {result.refinement.seconds:.0f} s")
        elif setting != "off":
            print(f"--dither {setting}: no linear channel to copy; both builds are the same")
    preprocessing = manifest.read(builds["off"]).preprocessing
    images = np.concatenate(list(datasets.iter_batches(datasets.open_data(evaluation, labels), preprocessing, 50)))
    batches = [images[i:i + 50] for i in range(0, len(images), 50)]
    reference = collect({"float": open_runner(builds["off"] / "model_folded.keras")}, iter(batches))["float"]
    on = args.dither
    print(f"\ntimed on {args.device}" + (" (emulated: compare the ratios, not the times)" if args.device != "cpu" else ""))
    print(f"{'file':<20}{'threads':>8}{on + ' ms':>9}{'off ms':>9}{on + '/off':>9}"
          f"{'rounds':>13}{'SQNR ' + on:>11}{'SQNR off':>10}{'agree ' + on:>12}{'agree off':>11}   ({len(images)} images)")
    for name in ("model_int8.tflite", "model_int8.onnx"):
        quality = {}
        for setting, out in builds.items():
            output = collect({"int8": open_runner(out / name)}, iter(batches))["int8"]
            quality[setting] = (sqnr_db(reference, output), agreement(reference, output))
        for threads in args.threads:
            times = {setting: [] for setting in builds}
            for _ in range(args.rounds):
                for setting, out in builds.items():
                    times[setting].append(_median_ms(out / name, threads, args.min_secs, args.device))
            copied, off = float(np.median(times[on])), float(np.median(times["off"]))
            paired = np.array(times[on]) / np.array(times["off"])  # each round's ratio: the spread of the noise
            print(f"{name:<20}{threads:>8}{copied:>9.3f}{off:>9.3f}{copied / off:>8.2f}x"
                  f"{f'{paired.min():.2f}-{paired.max():.2f}x':>13}"
                  f"{quality[on][0]:>11.1f}{quality['off'][0]:>10.1f}{quality[on][1]:>12.1%}"
                  f"{quality['off'][1]:>11.1%}", flush=True)


def _median_ms(path: Path, threads: int, min_secs: float, device: str) -> float:
    """One timing round of one file: here (mobiledeploy.runtime.timing), or under qemu (bench_build)."""
    import mobiledeploy
    from mobiledeploy.runtime import timing as bench
    from mobiledeploy.options import BenchSettings

    if device == "cpu":
        settings = BenchSettings(num_threads=threads, warmup_runs=10, num_runs=50, min_secs=min_secs)
        return bench.measure(path, path.suffix[1:], "int8", settings).median_ms
    report = mobiledeploy.bench_build(path, device=device, num_threads=threads, warmup_runs=1, num_runs=20, min_secs=0)
    return report.rows[0].median_ms


if __name__ == "__main__":
    main()
