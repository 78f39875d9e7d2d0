"""Where the int8 error of the shared MobileNet comes from: weights or activations.

    python benchmarks/error_budget.py [--shared ../shared/data] [--seed 2026] [--model other.h5]

On the fixed split of shared_imagenet_drift.py (200 calibration images, 300 evaluation
images) the folded float model runs in a simulation of int8 inference, with refine.py's
rounding (the converters' asymmetric per-tensor int8 over the calibration min/max, after each
fused activation): weights float or on the int8 grid (nearest rounding, or mobiledeploy's
refinement), activations float or int8. Output SQNR and top-1 agreement are against the float
model on the evaluation images; the last row is the real default int8 TFLite file on the same
images, built with --dither off as the simulation runs the model's own channels, to show the
simulation is faithful. If "float weights, int8 activations" is no better
than the default, no weight-side lever can close the rest of the gap: it is the int8
activation grid. The logit floor (logit_floor.py) is the one activation-side lever in the
default; its row shows what it takes off the int8 logits' share. --each-layer puts one layer at
a time back to float weights in the default's simulation: a layer whose refined int8 weights
beat its own float weights there is compensating the int8 activations around it, and no better
rounding of it can gain much. --model studies another model (other_models.py) on the same images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def main() -> None:
    from shared_imagenet_drift import shared_split, split_arguments  # this folder: the same fixed split

    parser = split_arguments(__doc__.splitlines()[0], "/tmp/mobiledeploy-budget")
    parser.add_argument("--each-tensor", type=int, default=0, metavar="N",
                        help="also list the N activation tensors whose int8 rounding alone (float weights, "
                             "every other tensor float, logit floor on) costs the most")
    parser.add_argument("--model", type=Path, default=None,
                        help="another model to study on the same images (default: the shared MobileNet v1 0.25)")
    parser.add_argument("--each-layer", action="store_true",
                        help="also give the default's simulated SQNR with each weighted layer back to float weights")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import mobiledeploy
    from mobiledeploy.data import calibration
    from mobiledeploy.data import datasets
    from mobiledeploy.passes.folding import fold_batchnorm
    from mobiledeploy.model.loading import load_model
    from mobiledeploy.evaluation.metrics import agreement, collect, sqnr_db
    from mobiledeploy.passes.logit_floor import floor_logits, floored
    from mobiledeploy.passes.refine import refine_for_int8
    from mobiledeploy.runtime.runners import KerasRunner, open_runner

    model_path = args.model or args.shared / "models" / "mobilenet_v1_0.25_224.h5"
    calib_dir, eval_dir, labels = shared_split(args.shared, args.work / "shared-split", args.seed)
    model = load_model(model_path).model
    preprocessing = calibration.preprocessing_for(model)
    folded, _ = fold_batchnorm(model)
    calib = np.concatenate(list(calibration.iter_batches(calibration.scan(calib_dir, preprocessing, 200), "calib", 50)))
    images = np.concatenate(list(datasets.iter_batches(datasets.open_data(eval_dir, labels), preprocessing, 50)))
    ranges = _ranges(folded, calib)
    nearest = _nearest(folded)
    refined, _ = refine_for_int8(folded, calib)
    floor = floor_logits(folded, calib)
    with_floor = floored(refined, floor)
    build = mobiledeploy.quantize(model_path, calib_dir, args.work / "build", num_calib=200, overwrite=True,
                                  dither="off")  # the simulation below has the model's own channels
    real = collect({"float": KerasRunner(folded), "tflite": open_runner(Path(build.output_dir) / "model_int8.tflite")},
                   (images[i:i + 50] for i in range(0, len(images), 50)))
    reference = real["float"]
    rows = [
        ("nearest int8 weights, float activations", _simulate(nearest, images, None)),
        ("float weights, int8 activations", _simulate(folded, images, ranges)),
        ("nearest int8 weights, int8 activations", _simulate(nearest, images, ranges)),
        ("refined int8 weights, int8 activations", _simulate(refined, images, ranges)),
        ("refined, int8 activations, logit floor (default)", _simulate(with_floor, images, _ranges(with_floor, calib))),
        ("real default model_int8.tflite (--dither off)", real["tflite"]),
    ]
    print(f"{'simulation':<52}{'SQNR dB':>8}{'agree':>8}   ({len(images)} images)")
    for label, output in rows:
        print(f"{label:<52}{sqnr_db(reference, output):>8.1f}{agreement(reference, output):>8.1%}", flush=True)
    if args.each_layer:
        _each_layer(with_floor, floored(folded, floor), _ranges(with_floor, calib), images, reference)
    if args.each_tensor:
        _each_tensor(floored(folded, floor), calib, images, reference, args.each_tensor)


def _each_tensor(model, calib: np.ndarray, images: np.ndarray, reference: np.ndarray, count: int) -> None:
    """The tensors whose int8 rounding alone costs the most output SQNR, worst first."""
    from mobiledeploy.evaluation.metrics import agreement, sqnr_db

    ranges = _ranges(model, calib)
    rows = []
    for name, bounds in ranges.items():
        output = _simulate(model, images, {name: bounds})
        rows.append((sqnr_db(reference, output), agreement(reference, output), name, bounds))
    print(f"\nonly this tensor int8 (float weights, logit floor){'':<4}{'SQNR dB':>8}{'agree':>8}   range")
    for sqnr, agree, name, (low, high) in sorted(rows)[:count]:
        print(f"{name:<52}{sqnr:>8.1f}{agree:>8.1%}   {low:.3g}..{high:.3g}")


def _each_layer(refined, float_model, ranges: dict, images: np.ndarray, reference: np.ndarray) -> None:
    """The default's simulation with one weighted layer at a time given its float weights back."""
    from mobiledeploy.evaluation.metrics import agreement, sqnr_db
    from mobiledeploy.model.graph import WEIGHTED

    base = sqnr_db(reference, _simulate(refined, images, ranges))
    print(f"\n{'one layer back to float weights (rest: default)':<52}{'SQNR dB':>8}{'agree':>8}{'gain':>8}")
    for layer in refined.layers:
        if type(layer).__name__ not in WEIGHTED:
            continue
        kept = layer.get_weights()
        layer.set_weights(float_model.get_layer(layer.name).get_weights())
        output = _simulate(refined, images, ranges)
        layer.set_weights(kept)
        sqnr = sqnr_db(reference, output)
        print(f"{layer.name:<52}{sqnr:>8.1f}{agreement(reference, output):>8.1%}{sqnr - base:>+8.2f}", flush=True)


def _ranges(model, calib: np.ndarray) -> dict[str, tuple[float, float]]:
    """Calibration min/max of every tensor the converters round to int8, as they compute it."""
    import keras

    from mobiledeploy.model.graph import layer_graph
    from mobiledeploy.passes.refine import rounded_outputs

    graph = layer_graph(model)
    names = [n for n in rounded_outputs(graph) if graph[n]["kind"] != "InputLayer"]
    probe = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    ranges = {n: (float(calib.min()), float(calib.max())) for n in graph if graph[n]["kind"] == "InputLayer"}
    for start in range(0, len(calib), 25):
        for name, out in zip(names, probe(calib[start:start + 25], training=False)):
            low, high = ranges.get(name, (np.inf, -np.inf))
            ranges[name] = (min(low, float(np.min(out))), max(high, float(np.max(out))))
    return ranges


def _nearest(model):
    """A copy of ``model`` with every weighted layer's kernel rounded to nearest on the
    per-channel int8 grid, as the plain converters do."""
    import keras

    from mobiledeploy.model.graph import WEIGHTED
    from mobiledeploy.passes.rounding import quantize_weights

    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    for layer in copy.layers:
        if type(layer).__name__ in WEIGHTED:
            quantize_weights(layer)
    return copy


def _simulate(model, images: np.ndarray, ranges: dict | None) -> np.ndarray:
    """``model`` run layer by layer, rounding each int8 tensor to its grid unless ``ranges`` is None."""
    from mobiledeploy.model.graph import layer_graph, run_layer
    from mobiledeploy.passes.refine import fake_quantize

    graph = layer_graph(model)
    outputs = []
    for start in range(0, len(images), 50):
        values: dict[str, np.ndarray] = {}
        for name, node in graph.items():
            if node["kind"] == "InputLayer":
                x = images[start:start + 50]
            else:
                x = run_layer(model.get_layer(name), [values[p] for p in node["inputs"]], 50)
            values[name] = fake_quantize(x, *ranges[name]) if ranges is not None and name in ranges else x
        outputs.append(values[name])  # the last layer in graph order is the output
    return np.concatenate(outputs)


if __name__ == "__main__":
    main()
