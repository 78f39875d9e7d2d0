"""Float vs int8 accuracy and agreement of the real ImageNet MobileNet v1 0.25 (../shared/data).

    python benchmarks/shared_imagenet_drift.py [--shared ../shared/data] [--work /tmp/md-shared]

A fixed seeded split of the 500 dev images: 200 calibrate, the other 300 evaluate. The
evaluation images are laid out as <wnid>/<file> folders (symlinks) with a labels file of all
1000 wnids in model output order: exactly how a user evaluates on an ImageNet subset.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def split_arguments(description: str, work: str) -> argparse.ArgumentParser:
    """--shared (the data folder), --work (scratch) and --seed (of the fixed split)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get(
        "MOBILEDEPLOY_SHARED_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--work", type=Path, default=Path(work))
    parser.add_argument("--seed", type=int, default=2026)
    return parser


def main() -> None:
    args = split_arguments(__doc__.splitlines()[0], "/tmp/mobiledeploy-shared-bench").parse_args()

    import mobiledeploy
    from mobiledeploy.evaluation.builds import evaluate_build

    calib, evaluation, labels = shared_split(args.shared, args.work, args.seed)
    started = time.perf_counter()
    mobiledeploy.quantize(args.shared / "models" / "mobilenet_v1_0.25_224.h5", calib,
                          args.work / "build", num_calib=200, num_holdout=0, overwrite=True)
    quantize_s = time.perf_counter() - started
    report = evaluate_build(args.work / "build", evaluation, labels)
    ref = report.row(report.reference)
    print(f"quantize (200 calibration images): {quantize_s:.1f} s; evaluation on {report.samples} other images")
    print(f"{'artifact':<20} {'top-1':>7} {'vs float':>9} {'±95%':>6} {'top-5':>7} {'agreement':>10} {'(95%)':>15} "
          f"{'SQNR dB':>8} {'mean KL':>8}")
    for row in report.rows:
        sqnr = "inf" if math.isinf(row["sqnr_db"]) else f"{row['sqnr_db']:.1f}"
        low, high = row["agreement_ci95"]
        print(f"{row['artifact']:<20} {row['top1']:>7.1%} {100 * (row['top1'] - ref['top1']):>+9.2f} "
              f"{100 * row['top1_change_ci95']:>6.2f} {row['top5']:>7.1%} {row['agreement']:>10.1%} "
              f"{f'{low:.1%} to {high:.1%}':>15} {sqnr:>8} {row['mean_kl']:>8.4f}")


def shared_split(shared: Path, work: Path, seed: int = 2026) -> tuple[Path, Path, Path]:
    """The fixed split of the shared dev images: (calibration folder, evaluation folder laid out
    as <wnid>/<file>, labels file of all 1000 wnids in model output order). Symlinks only."""
    images = sorted((shared / "imagenet-dev" / "images").iterdir())
    order = np.random.default_rng(seed).permutation(len(images))
    shutil.rmtree(work, ignore_errors=True)
    link_images(work / "calib", [images[i] for i in order[:200]])
    link_images(work / "eval", [images[i] for i in order[200:]], by_class=True)
    wnids = [line.split("\t")[1] for line in (shared / "imagenet-dev" / "classes.txt").read_text().splitlines()]
    (work / "labels.txt").write_text("\n".join(wnids) + "\n")
    return work / "calib", work / "eval", work / "labels.txt"


def link_images(folder: Path, files: list[Path], by_class: bool = False) -> None:
    """Symlinks to ``files`` in a fresh ``folder``; with ``by_class``, in one subfolder per wnid
    (the file name's prefix), the layout eval reads labels from."""
    shutil.rmtree(folder, ignore_errors=True)
    for f in files:
        target = folder / (f.name.split("_", 1)[0] if by_class else "")
        target.mkdir(parents=True, exist_ok=True)
        (target / f.name).symlink_to(f.resolve())


if __name__ == "__main__":
    main()
