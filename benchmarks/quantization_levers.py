"""int8 drift of each quantization lever, side by side: plain converters vs mobiledeploy.

    python benchmarks/quantization_levers.py [--shared ../shared/data] [--work /tmp/md-levers]
        [--levers 0 2] [--seeds 2026 1 2 3 4 5 6]

Two models: the real ImageNet MobileNet v1 0.25 in ../shared/data (fixed seeded split of its
500 dev images: 200 calibrate, the other 300 evaluate, as in shared_imagenet_drift.py) and the
bundled reference model (calibration_data/ vs eval_data/). For every lever the same
calibration images feed both exporters; top-1 is against the labels, agreement and SQNR
against the folded float model, all on images never used for calibration. "±95%" bounds the
half-width of a 95% interval for "vs float": the change is a mean over images of -1, 0 or +1
(int8 right where float was wrong, or the reverse), non-zero only where the two disagree, so
its standard error is at most sqrt((1 - agreement) / images).

One split's figures also carry the luck of its 200 calibration images: --seeds runs the shared
model on several seeded splits and ends with each lever's mean over them (and the range of its
top-1 change), the better estimate of what a lever does on images it has not seen.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# (label, QuantizeOptions fields). The levers with the logit floor off keep the converters' own
# activation ranges, as when they were measured: the floor off leaves the logits a linear tensor,
# which the default --activation-ranges auto would narrow. Likewise every lever that does not set
# --dither builds with --dither off, as when it was measured: "default" in their labels is the
# default before --dither spare (lever 19, today's default).
_AS_MEASURED = [
    ("plain converters", {"refine": "none", "logit_floor": "off", "activation_ranges": "minmax"}),
    ("bias correction", {"refine": "bias", "logit_floor": "off", "activation_ranges": "minmax"}),
    ("default before spare (adaround+bias+floor, --dither off)", {}),
    ("default + mse ranges", {"activation_ranges": "mse"}),
    ("per-tensor, plain", {"refine": "none", "per_channel": False, "equalize": "off", "logit_floor": "off",
                           "activation_ranges": "minmax"}),
    ("per-tensor, equalize only", {"refine": "none", "per_channel": False, "logit_floor": "off",
                                   "activation_ranges": "minmax"}),
    ("per-tensor, adaround + floor", {"per_channel": False, "equalize": "off"}),
    ("per-tensor, equalize + adaround + floor", {"per_channel": False}),
    # mixed precision needs held-out images to measure its budget on: 50 come out of calibration
    ("mixed precision, --max-disagreement 2", {"max_disagreement": 2.0, "num_holdout": 50}),
    ("default + --equalize on", {"equalize": "on"}),
    ("adaround + bias (--logit-floor off)", {"logit_floor": "off", "activation_ranges": "minmax"}),
    ("default, adaround on every layer", {"rounding_positions_per_weight": 0}),
    ("default, but --activation-ranges minmax", {"activation_ranges": "minmax"}),
    ("default, --onnx-activations uint8", {"onnx_activations": "uint8"}),
    ("default + --dither auto", {"dither": "auto"}),
    ("per-tensor + --dither on", {"per_channel": False, "dither": "on"}),
    ("default, --rounding-samples 200", {"rounding_samples": 200}),
    ("default, --rounding-samples 32", {"rounding_samples": 32}),
    ("default, --rounding-samples 128", {"rounding_samples": 128}),
    ("default (adaround+bias+floor + --dither spare)", {"dither": "spare"}),
    # --precision: the int8-only refinements are off for these (QuantizeOptions.resolved)
    ("--precision int16x8", {"precision": "int16x8"}),
    ("--precision float16", {"precision": "float16"}),
    ("--precision dynamic", {"precision": "dynamic"}),
    ("--precision int16x8 --refine none", {"precision": "int16x8", "refine": "none"}),
    ("--precision dynamic --refine none", {"precision": "dynamic", "refine": "none"}),
    # mixed measures its budget on held-out images: 50 come out of calibration, as for lever 8
    ("--precision mixed (budget 1 point)", {"precision": "mixed", "num_holdout": 50}),
    ("--precision mixed --max-disagreement 0", {"precision": "mixed", "max_disagreement": 0.0, "num_holdout": 50}),
]
LEVERS = [(label, {"dither": "off", **fields}) for label, fields in _AS_MEASURED]


def main() -> None:
    from shared_imagenet_drift import shared_split, split_arguments  # this folder: the same fixed split

    parser = split_arguments(__doc__.splitlines()[0], "/tmp/mobiledeploy-levers")
    parser.add_argument("--levers", nargs="+", type=int, default=list(range(len(LEVERS))),
                        help="indices into the lever list (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run the shared model on several seeded splits and add their mean "
                             "(default: the one split of --seed)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    seeds = args.seeds or [args.seed]

    models = [("reference (MNIST, 32x32)", ROOT / "models" / "mnist_mobilenet_v1_0.25_32.h5",
               ROOT / "calibration_data", ROOT / "eval_data", None, None)]
    if (args.shared / "models" / "mobilenet_v1_0.25_224.h5").is_file():
        for seed in seeds:
            calib, evaluation, labels = shared_split(args.shared, args.work / f"shared-split-{seed}", seed)
            models.append(("ImageNet MobileNet v1 0.25", args.shared / "models" / "mobilenet_v1_0.25_224.h5",
                           calib, evaluation, labels, seed))
    print(f"{'model':<28}{'lever':<42}{'artifact':<20}{'top-1':>7}{'vs float':>9}{'±95%':>6}{'agree':>8}"
          f"{'SQNR':>7}{'refine s':>9}{'total s':>8}")
    splits: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for name, model, calib, evaluation, labels, seed in models:
        if len(seeds) > 1 and seed is not None:
            print(f"-- split of seed {seed}", flush=True)
        for index in args.levers:
            label, fields = LEVERS[index]
            for artifact, figures in _run(name, label, fields, model, calib, evaluation, labels, args.work / f"{index}"):
                if seed is not None:
                    splits.setdefault((label, artifact), []).append(figures)
    if len(seeds) > 1:
        _split_means(splits, seeds)


def _split_means(splits: dict[tuple[str, str], list[tuple[float, float, float]]], seeds: list[int]) -> None:
    """Each lever's shared-model figures over the seeded splits: the mean, and the range of the
    top-1 change. The splits overlap (300 of the same 500 images each), so the spread is the
    noise of calibrating on one draw of 200 images and scoring on the rest, not a standard error."""
    print(f"\nImageNet MobileNet v1 0.25, mean of {len(seeds)} splits (seeds {' '.join(map(str, seeds))})")
    print(f"{'lever':<42}{'artifact':<20}{'vs float':>9}{'min':>7}{'max':>7}{'agree':>8}{'min':>7}{'SQNR':>7}")
    for (label, artifact), rows in splits.items():
        change, agree, sqnr = (np.array(column) for column in zip(*rows))
        print(f"{label:<42}{artifact:<20}{change.mean():>+9.2f}{change.min():>+7.2f}{change.max():>+7.2f}"
              f"{agree.mean():>8.1%}{agree.min():>7.1%}{sqnr.mean():>7.1f}")


def _run(name, label, fields, model, calib, evaluation, labels, out) -> list[tuple[str, tuple[float, float, float]]]:
    """Build and evaluate one lever; print its rows. Returns (artifact, (top-1 change in points,
    agreement, SQNR)) per int8 file."""
    import mobiledeploy
    from mobiledeploy.evaluation.builds import evaluate_build

    started = time.perf_counter()
    fields = {"num_holdout": 0, **fields}
    num_calib = (200 if labels else 300) - fields["num_holdout"]
    result = mobiledeploy.quantize(model, calib, out, num_calib=num_calib, overwrite=True, **fields)
    total = time.perf_counter() - started
    refine_s = (result.refinement.seconds if result.refinement else 0.0) + \
        (result.equalization.seconds if result.equalization else 0.0)
    report = evaluate_build(out, evaluation, labels)
    ref = report.row(report.reference)
    figures = []
    for row in report.rows:
        if row["precision"] != "int8":
            continue
        bound = 196 * np.sqrt((1 - row["agreement"]) / row["samples"])  # points, see the docstring
        print(f"{name:<28}{label:<42}{row['artifact']:<20}{row['top1']:>7.1%}"
              f"{100 * (row['top1'] - ref['top1']):>+9.2f}{bound:>6.2f}{row['agreement']:>8.1%}"
              f"{row['sqnr_db']:>7.1f}{refine_s:>9.1f}{total:>8.1f}", flush=True)
        figures.append((row["artifact"], (100 * (row["top1"] - ref["top1"]), row["agreement"], row["sqnr_db"])))
    if result.mixed_precision is not None:
        m = result.mixed_precision
        print(f"{'':<28}  float layers: {', '.join(m.float_layers) or 'none'} ({m.float_mac_share:.1%} of MACs); "
              f"held-out agreement loss {m.agreement_loss:.1f} points: budget {'met' if m.met else 'NOT met'}")
    return figures


if __name__ == "__main__":
    main()
