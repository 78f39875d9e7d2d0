"""Quantization levers compared on every shared dev image, paired, by cross-fitting.

    python benchmarks/crossfit_levers.py [--shared ../shared/data] [--levers 2 9] [--folds 5] [--views 10]

One fixed 200/300 split measures a top-1 change with a standard error of about one point (300
images), which is as large as the differences between good levers. Here the 500 shared
ImageNet images are cut into --folds folds (seeded); for each fold every lever calibrates on
200 images drawn from the other folds and is evaluated on the held-out fold, so every image is
evaluated once per lever, never by a model calibrated on it. The same calibration images
serve every lever of a fold, so the levers can be compared image by image. The table gives
each int8 file's top-1 change vs float with the half-width of its 95% interval ("±95%": the
change is a mean over the images of -1, 0 or +1, int8 right where float was wrong or the
reverse), agreement and output SQNR over all 500 images and, against the first lever listed,
how many images only it gets right / only the first gets right (the discordant pairs; a
difference well inside their total is noise).

--views N also evaluates every held-out image on N views near its centre crop (the centre
crop, crops shifted by 8 pixels up, down, left and right, and the mirror image of each; at most
10) and adds a table of the top-1 change and agreement pooled over all views, with a 95%
interval that treats an image's views as one sample (they are not independent). Each view is a
real image as a user might crop it and gives the int8 rounding another draw, so ten views
narrow the interval about twofold (+-0.6 instead of +-1.3 points on 500 images); a lever's
difference from the first lever, paired image by image over the same views, is resolved to about
+-0.7 points of agreement and +-0.5 of top-1. They measure the views, not the centre crop alone:
on the shared model the float model's top-1 is 56 to 59% on every view, yet the default's int8
files agree with float about 3 points more on the exact centre crop than on the other views,
more than builds that round differently do, and its settings were chosen on these centre crops:
for it the other views are the better estimate of images it has not seen
(docs/experiments/, "Ten views per image").

--seeds S [S ...] cross-fits once per seed, each a different partition of the images into folds
(the builds go to --work/seedS), and with --views ends with every view pooled over the
partitions, image by image: agreement on the centre crop and on the other views, the centre
crop's lead over them, and each lever against the first. Builds of different partitions round
most weights alike, so the pooled intervals narrow the luck of the images, not of one build.

Every run saves each fold's outputs for each lever beside its build (--work/.../fold<k>/<lever>);
--reuse takes them from there instead of building again when the model file, the images, the
lever's options, --views, mobiledeploy's source and the converters' versions are all unchanged.
So a run that adds a lever or a seed to an earlier one builds only what is new.

After the levers, each lever's TFLite and ONNX files are compared with each other: the images on
which their classes differ, and which of the two gets those right.

--model runs the same folds on another real model (see other_models.py). When its classes are
not ImageNet's, top-1 against the labels means nothing: the table then gives agreement and
SQNR, and the paired counts are of images on which only this lever / only the first agrees
with float.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def main() -> None:
    from quantization_levers import LEVERS  # this folder: one list of levers for both benchmarks
    from shared_imagenet_drift import split_arguments

    parser = split_arguments(__doc__.splitlines()[0], "/tmp/mobiledeploy-crossfit")
    parser.add_argument("--levers", nargs="+", type=int, default=[19, 2, 0],
                        help="indices into quantization_levers.LEVERS; the first is the baseline of "
                             "the paired counts (default: the default lever vs the default before "
                             "--dither spare and the plain converters)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--model", type=Path, default=None,
                        help="another model on the same images (default: the shared MobileNet v1 0.25)")
    parser.add_argument("--views", type=int, default=1, choices=range(1, len(VIEW_SHIFTS) * 2 + 1), metavar="N",
                        help="also pool the top-1 change over N views of each held-out image (1-10; default 1: "
                             "the centre crop only)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="cross-fit on one partition of the images per seed (instead of --seed) and, with "
                             "--views, end with every view pooled over the partitions")
    parser.add_argument("--reuse", action="store_true",
                        help="take each fold's outputs from an earlier run in the same --work instead of building "
                             "again, where the model, images, lever options, views, mobiledeploy's source and "
                             "the converters' versions are all unchanged (every run saves them)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    model = args.model or args.shared / "models" / "mobilenet_v1_0.25_224.h5"
    if not model.is_file():
        raise SystemExit(f"no shared model at {model}: pass --shared")
    images = sorted((args.shared / "imagenet-dev" / "images").iterdir())
    wnids = [line.split("\t")[1] for line in (args.shared / "imagenet-dev" / "classes.txt").read_text().splitlines()]
    class_of = {wnid: i for i, wnid in enumerate(wnids)}
    labels = {f.name: class_of[f.name.split("_", 1)[0]] for f in images}
    seeds = args.seeds or [args.seed]
    partitions = []
    for seed in seeds:
        work = args.work / f"seed{seed}" if len(seeds) > 1 else args.work
        if len(seeds) > 1:
            print(f"\npartition {len(partitions) + 1}/{len(seeds)}: seed {seed}", flush=True)
        float_out, int8_out, float_views, int8_views = _partition(args, model, images, seed, work)
        _table(args.levers, LEVERS, labels, float_out, int8_out)
        classes = len(next(iter(float_out.values())))
        imagenet_labels = labels if classes == 1000 else None
        if float_views:
            _views_table(args.levers, LEVERS, imagenet_labels, float_views, int8_views, args.views)
        partitions.append((float_views, int8_views))
    if len(seeds) > 1 and args.views > 1:
        _pooled_views_table(args.levers, LEVERS, imagenet_labels, partitions, args.views)


def _partition(args, model: Path, images: list[Path], seed: int, work: Path):
    """One cross-fit: every image evaluated once, by each lever's build calibrated on 200 images of
    the other folds. (float outputs, int8 outputs, float classes per view, int8 classes per view).
    Each fold's outputs for each lever are saved beside its build; with --reuse a later run takes
    them from there instead of building again, when nothing they depend on has changed."""
    from helpers.crossfit_saved import load_outputs, save_outputs, sources_digest
    from quantization_levers import LEVERS
    from shared_imagenet_drift import link_images

    order = np.random.default_rng(seed).permutation(len(images))
    folds = np.array_split(order, args.folds)
    float_out: dict[str, np.ndarray] = {}
    int8_out: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    float_views: dict[str, np.ndarray] = {}  # image -> the float model's class on each view
    int8_views: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    sources = sources_digest(model)
    for k, held_out in enumerate(folds):
        rest = np.concatenate([f for j, f in enumerate(folds) if j != k])
        calib = work / f"fold{k}" / "calib"
        evaluation = work / f"fold{k}" / "eval"
        link_images(calib, [images[i] for i in rest[:200]])
        link_images(evaluation, [images[i] for i in held_out])
        views = None  # (image names, pixels, preprocessing): decoded once, read by every lever of the fold
        for index in args.levers:
            label, fields = LEVERS[index]
            out = work / f"fold{k}" / str(index)
            fingerprint = {"sources": sources, "options": repr(sorted(fields.items())), "views": args.views,
                           "view_shifts": repr(VIEW_SHIFTS), "calib": [images[i].name for i in rest[:200]],
                           "eval": [images[i].name for i in held_out]}
            saved = load_outputs(out, fingerprint) if args.reuse else None
            print(f"fold {k + 1}/{args.folds}: {label}" + (" (saved outputs)" if saved else ""), flush=True)
            if saved is None:
                saved = {"int8": {}, "float_views": {}, "int8_views": {}}
                saved["float"] = _quantize_and_predict(model, calib, evaluation, out, fields, saved["int8"])
                if args.views > 1:
                    if views is None:  # every lever's model_folded.keras is the same float model
                        views = _view_pixels(out, evaluation, args.views)
                    saved["float_views"] = dict(zip(views[0], _view_classes(out / "model_folded.keras",
                                                                            *views[1:], args.views)))
                    for int8_file in sorted(out.glob("model_int8.*")):
                        saved["int8_views"][int8_file.name] = dict(zip(views[0], _view_classes(
                            int8_file, *views[1:], args.views)))
                save_outputs(out, fingerprint, saved)
            float_out.update(saved["float"])
            float_views.update(saved["float_views"])
            for artifact, rows in saved["int8"].items():
                int8_out.setdefault((index, artifact), {}).update(rows)
            for artifact, rows in saved["int8_views"].items():
                int8_views.setdefault((index, artifact), {}).update(rows)
    return float_out, int8_out, float_views, int8_views


def _quantize_and_predict(model, calib, evaluation, out, fields, int8_out) -> dict[str, np.ndarray]:
    """Build with the lever's options; the float model's output per image, and each int8 file's
    into ``int8_out`` (artifact -> image -> output)."""
    import mobiledeploy
    from mobiledeploy import manifest
    from mobiledeploy.data import datasets
    from mobiledeploy.evaluation.metrics import collect
    from mobiledeploy.runtime.runners import open_runner

    fields = {"num_holdout": 0, **fields}
    result = mobiledeploy.quantize(model, calib, out, num_calib=200 - fields["num_holdout"], overwrite=True, **fields)
    preprocessing = manifest.read(out).preprocessing
    data = datasets.open_data(evaluation)
    names = [Path(item).name for item in data.items]
    runners = {"float": open_runner(out / "model_folded.keras")}
    runners.update({a.file: open_runner(out / a.file) for a in result.artifacts if a.quantized})
    outputs = collect(runners, datasets.iter_batches(data, preprocessing, 50))
    for name, rows in outputs.items():
        if name != "float":
            int8_out[name] = dict(zip(names, rows.astype(np.float64)))
    return dict(zip(names, outputs["float"].astype(np.float64)))


VIEW_SHIFTS = ((0, 0), (-8, 0), (8, 0), (0, -8), (0, 8))  # (down, right) pixels from the centre crop


def _views(path: Path, preprocessing, count: int) -> np.ndarray:
    """``count`` 0..255 views of one image near its centre crop: the centre crop, the crops
    VIEW_SHIFTS away from it, then the mirror image of each, in that order. The image is resized
    as evaluation resizes it, so the first view is exactly the evaluated centre crop (for a
    square input: a wider window keeps the same resize only when height equals width)."""
    from dataclasses import replace

    from PIL import Image

    from mobiledeploy.data.images import prepare_image

    margin = max(max(abs(dy), abs(dx)) for dy, dx in VIEW_SHIFTS)
    height, width = preprocessing.height, preprocessing.width
    wider = replace(preprocessing, height=height + 2 * margin, width=width + 2 * margin,
                    crop_fraction=preprocessing.crop_fraction * (height + 2 * margin) / height)
    with Image.open(path) as image:
        window = prepare_image(image, wider)
    crops = [window[margin + dy:margin + dy + height, margin + dx:margin + dx + width] for dy, dx in VIEW_SHIFTS]
    return np.stack((crops + [crop[:, ::-1] for crop in crops])[:count])


def _view_pixels(out: Path, evaluation: Path, count: int):
    """(image names, 0..255 pixels of ``count`` views of each evaluation image, the build's
    preprocessing)."""
    from mobiledeploy import manifest
    from mobiledeploy.data import datasets

    preprocessing = manifest.read(out).preprocessing
    files = [Path(item) for item in datasets.open_data(evaluation).items]
    return [f.name for f in files], np.concatenate([_views(f, preprocessing, count) for f in files]), preprocessing


def _view_classes(model_file: Path, pixels: np.ndarray, preprocessing, count: int) -> np.ndarray:
    """The class ``model_file`` gives each view: an (images, views) array."""
    from mobiledeploy.data.calibration import scale
    from mobiledeploy.evaluation.metrics import collect
    from mobiledeploy.runtime.runners import open_runner

    batches = (scale(pixels[i:i + 50], preprocessing) for i in range(0, len(pixels), 50))
    outputs = collect({"model": open_runner(model_file)}, batches)["model"]
    return outputs.argmax(axis=1).reshape(-1, count)


def _views_table(levers, catalogue, labels, float_views, int8_views, count: int) -> None:
    """Top-1 change and agreement pooled over every view of every image; the 95% interval is
    of the mean over images of each image's mean change over its views. Then the centre crop
    against the other views, image by image: how much more it agrees with float, and how much
    more top-1 it loses, each with its 95% interval (an interval that excludes 0 says the
    centre-crop figures are not representative of the views); last, each lever against the first
    one listed, image by image over the same views. Without ``labels`` (a model whose
    classes are not ImageNet's) "top-1" is agreement with the float model's class."""
    names = sorted(float_views)
    float_top = np.stack([float_views[n] for n in names])
    truth = np.array([labels[n] for n in names])[:, None] if labels else float_top
    if labels:
        print(f"\n{len(names)} images x {count} views near the centre crop; float top-1 "
              f"{np.mean(float_top == truth):.1%} (centre crop {np.mean(float_top[:, 0] == truth[:, 0]):.1%})")
    else:
        print(f"\n{len(names)} images x {count} views near the centre crop; not ImageNet's classes: "
              "'top-1' is agreement with float")
    print(f"{'lever':<42}{'artifact':<20}{'top-1':>7}{'vs float':>9}{'±95%':>7}{'agree':>8}"
          f"{'centre - other views: agree':>29}{'±95%':>7}{'vs float':>9}{'±95%':>7}"
          f"{'this - first lever: agree':>27}{'±95%':>7}{'top-1':>7}{'±95%':>7}")
    for (index, artifact), rows in sorted(int8_views.items(), key=lambda kv: (levers.index(kv[0][0]), kv[0][1])):
        change, agrees = _view_scores(rows, names, truth, float_top)
        # is the centre crop (view 0) representative of the views? paired by image
        centre_agree, centre_change = (agrees[:, 0] - agrees[:, 1:].mean(axis=1),
                                       change[:, 0] - change[:, 1:].mean(axis=1))
        # against the first lever, image by image over the same views
        base_change, base_agrees = _view_scores(int8_views[(levers[0], artifact)], names, truth, float_top)
        paired_agree, paired_change = (agrees - base_agrees).mean(axis=1), (change - base_change).mean(axis=1)
        print(f"{catalogue[index][0]:<42}{artifact:<20}{np.mean(float_top == truth) + change.mean():>7.1%}"
              f"{100 * change.mean():>+9.2f}{_half_width(change.mean(axis=1)):>7.2f}{agrees.mean():>8.1%}"
              f"{100 * centre_agree.mean():>+29.2f}{_half_width(centre_agree):>7.2f}"
              f"{100 * centre_change.mean():>+9.2f}{_half_width(centre_change):>7.2f}"
              f"{100 * paired_agree.mean():>+27.2f}{_half_width(paired_agree):>7.2f}"
              f"{100 * paired_change.mean():>+7.2f}{_half_width(paired_change):>7.2f}")


def _pooled_views_table(levers, catalogue, labels, partitions, count: int) -> None:
    """Every view pooled over the partitions, image by image: each image's agreement and top-1
    change are averaged over its builds (one per partition), and the 95% intervals are over the
    images. The partitions' builds share calibration images and round most weights alike, so the
    intervals do not hold the luck of one build against another, only of these images. Columns:
    agreement on the centre crop and on the other views; the centre crop's lead over the other
    views; against the first lever, agreement on the other views and on the centre crop; the
    top-1 change over all views, and against the first lever."""
    names = sorted(partitions[0][0])
    runs = {}  # (lever, artifact) -> its (top-1 change, agreement) image x view arrays, one pair per partition
    for float_views, int8_views in partitions:
        float_top = np.stack([float_views[n] for n in names])
        truth = np.array([labels[n] for n in names])[:, None] if labels else float_top
        for key, rows in int8_views.items():
            runs.setdefault(key, []).append(_view_scores(rows, names, truth, float_top))
    scores = {key: tuple(np.mean(arrays, axis=0) for arrays in zip(*pairs)) for key, pairs in runs.items()}
    print(f"\n{len(names)} images x {count} views, pooled over {len(partitions)} partitions"
          + ("" if labels else "; not ImageNet's classes: 'top-1' is agreement with float"))
    print(f"{'lever':<42}{'artifact':<20}{'agree: centre':>14}{'±95%':>7}{'other views':>12}{'±95%':>7}"
          f"{'centre lead':>12}{'±95%':>7}{'vs first: other views':>22}{'±95%':>7}{'centre':>8}{'±95%':>7}"
          f"{'top-1 vs float':>15}{'±95%':>7}{'vs first':>9}{'±95%':>7}")
    for (index, artifact), (change, agrees) in sorted(scores.items(),
                                                      key=lambda kv: (levers.index(kv[0][0]), kv[0][1])):
        base_change, base_agrees = scores[(levers[0], artifact)]
        columns = (agrees[:, 0], agrees[:, 1:].mean(axis=1), agrees[:, 0] - agrees[:, 1:].mean(axis=1),
                   (agrees - base_agrees)[:, 1:].mean(axis=1), (agrees - base_agrees)[:, 0],
                   change.mean(axis=1), (change - base_change).mean(axis=1))
        widths = (14, 12, 12, 22, 8, 15, 9)
        signs = ("", "", "+", "+", "+", "+", "+")  # shares, then differences
        cells = "".join(f"{100 * c.mean():>{sign}{w}.2f}{_half_width(c):>7.2f}"
                        for c, w, sign in zip(columns, widths, signs))
        print(f"{catalogue[index][0]:<42}{artifact:<20}{cells}")


def _view_scores(rows: dict, names: list[str], truth: np.ndarray, float_top: np.ndarray):
    """(image, view) arrays: the top-1 change vs float (-1, 0 or +1) and agreement with float (0 or 1)."""
    top = np.stack([rows[n] for n in names])
    return (top == truth).astype(float) - (float_top == truth), (top == float_top).astype(float)


def _half_width(per_image: np.ndarray) -> float:
    """Half-width, in points, of the 95% interval of the mean of per-image values."""
    return 100 * 1.96 * per_image.std(ddof=1) / np.sqrt(len(per_image))


def _table(levers, catalogue, labels, float_out, int8_out) -> None:
    names = sorted(float_out)
    reference = np.stack([float_out[n] for n in names])
    float_top = reference.argmax(axis=1)
    imagenet = reference.shape[1] == 1000
    truth = np.array([labels[n] for n in names]) if imagenet else float_top
    if imagenet:
        print(f"\n{len(names)} images; float top-1 {np.mean(float_top == truth):.1%}")
        print(f"{'lever':<42}{'artifact':<20}{'top-1':>7}{'vs float':>9}{'±95%':>7}{'agree':>8}{'SQNR':>7}"
              f"{'only this':>10}{'only base':>10}")
    else:  # not ImageNet's classes: the labels mean nothing, the paired counts are of agreement
        print(f"\n{len(names)} images; {reference.shape[1]} classes, not ImageNet's: label-free drift only")
        print(f"{'lever':<42}{'artifact':<20}{'agree':>8}{'SQNR':>7}{'only this agrees':>18}{'only base agrees':>18}")
    for (index, artifact), rows in sorted(int8_out.items(), key=lambda kv: (levers.index(kv[0][0]), kv[0][1])):
        output = np.stack([rows[n] for n in names])
        top = output.argmax(axis=1)
        # the first lever's file of the same format (another --precision names its files differently)
        base_file = next(a for i, a in int8_out if i == levers[0] and Path(a).suffix == Path(artifact).suffix)
        base = np.stack([int8_out[(levers[0], base_file)][n] for n in names]).argmax(axis=1)
        right, base_right = top == truth, base == truth
        only_this, only_base = int(np.sum(right & ~base_right)), int(np.sum(base_right & ~right))
        sqnr = 10 * np.log10(np.sum(reference ** 2) / np.sum((output - reference) ** 2))
        agree = np.mean(top == float_top)
        if imagenet:
            change = right.astype(float) - (float_top == truth)  # -1, 0 or +1 per image
            half_width = _half_width(change)
            print(f"{catalogue[index][0]:<42}{artifact:<20}{np.mean(right):>7.1%}"
                  f"{100 * change.mean():>+9.2f}{half_width:>7.2f}{agree:>8.1%}"
                  f"{sqnr:>7.1f}{only_this:>10}{only_base:>10}")
        else:
            print(f"{catalogue[index][0]:<42}{artifact:<20}{agree:>8.1%}{sqnr:>7.1f}{only_this:>18}{only_base:>18}")
    _between_files(levers, catalogue, names, truth, int8_out)


def _between_files(levers, catalogue, names, truth, int8_out) -> None:
    """Each lever's TFLite and ONNX files against each other. They hold the same int8 weights and
    ranges; the two runtimes round a few requantized values differently, and later layers amplify
    those differences. Printed: the images on which the two files' classes differ, how many of
    those each file gets right (without ImageNet labels: agrees with float on), the SQNR of the
    ONNX file's outputs against the TFLite file's, and how many images have a tie at the top of
    each file's outputs (argmax then takes the lower class index)."""
    stems = {index: Path(a).stem for i, a in int8_out for index in [i]}  # model_int8, model_int16x8, ...
    pairs = [index for index in levers
             if {(index, f"{stems.get(index)}.tflite"), (index, f"{stems.get(index)}.onnx")} <= set(int8_out)]
    if not pairs:
        return
    print(f"{'TFLite vs ONNX, same lever':<42}{'classes differ':>15}{'TFLite right':>13}{'ONNX right':>11}"
          f"{'SQNR between':>13}{'ties at top':>12}")
    for index in pairs:
        tflite, onnx = (np.stack([int8_out[(index, f"{stems[index]}.{kind}")][n] for n in names])
                        for kind in ("tflite", "onnx"))
        differ = tflite.argmax(axis=1) != onnx.argmax(axis=1)
        right = [int(np.sum(differ & (o.argmax(axis=1) == truth))) for o in (tflite, onnx)]
        sqnr = 10 * np.log10(np.sum(tflite ** 2) / max(np.sum((onnx - tflite) ** 2), 1e-30))
        tops = [np.sort(o, axis=1)[:, -2:] for o in (tflite, onnx)]  # each image's two highest outputs
        ties = [int(np.sum(top[:, 0] == top[:, 1])) for top in tops]
        print(f"{catalogue[index][0]:<42}{f'{int(differ.sum())} ({differ.mean():.1%})':>15}{right[0]:>13}{right[1]:>11}"
              f"{sqnr:>13.1f}{f'{ties[0]} / {ties[1]}':>12}")


if __name__ == "__main__":
    main()
