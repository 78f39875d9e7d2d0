"""Other post-training quantizers against mobiledeploy's default, side by side, on the shared
ImageNet MobileNet v1 0.25.

    python benchmarks/other_quantizers.py [--shared ../shared/data] [--work /tmp/md-others]
        [--seeds 2026] [--tools nncf aeq mct aimet] [--venvs /tmp/mobiledeploy-quantizer-venvs]
        [--aimet-iterations 1000]

The plain converters are in quantization_levers.py. This benchmark asks the tools built to do
better than them: Intel's NNCF and Qualcomm's AIMET (both on the float ONNX file), Google's AI
Edge Quantizer (on the float TFLite file) and Sony's Model Compression Toolkit (on the Keras
model). Each runs in its own virtualenv under --venvs, made on first use with pip (AIMET pulls
in PyTorch, several GB; MCT TensorFlow 2.15), through quantizer_tools.py.

For each seeded split (200 calibration images, the other 300 evaluate, as in
shared_imagenet_drift.py) mobiledeploy quantizes with its defaults; every tool then starts from
that build's folded float file and the same 200 calibration images, preprocessed as mobiledeploy
feeds them to its own exporters. All files are scored in one `eval --compare` run against the
same folded float model: top-1 change, agreement and SQNR, and the 95% interval of
mobiledeploy's lead over each file, paired image by image ("lead ±95%": top-1 and agreement, in
points, against mobiledeploy's file of the same format). "float ops" counts the compute
operators the runtime runs in float: a file that leaves its logits or softmax in float is not
the full-int8 file the others are. "1 image": the median time of one image on one thread,
the int8 files alternated in 7 rounds, mobiledeploy's in ms and the others as a ratio to
mobiledeploy's file of the same format.

NNCF's files are made for OpenVINO, which runs their quantizers on operator inputs as integer
kernels, where ONNX Runtime runs every convolution in float: the benchmark also runs them, and
mobiledeploy's int8 ONNX file, on OpenVINO (its own virtualenv, through openvino_run.py), scored
the same way, with the precision OpenVINO runs each convolution in and the time of one image as
a ratio to mobiledeploy's file on ONNX Runtime. --no-openvino skips that.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
# tool -> (pip requirements of its venv, the module that proves it installed, its variants, the
# float file it reads: a file of the build, or "model" for the Keras model itself)
TOOLS = {
    "nncf": (["nncf==3.4.0", "onnx", "onnxruntime"], "nncf", ("defaults", "bias-correction"), "model_float.onnx"),
    "aeq": (["ai-edge-quantizer==0.10.0"], "ai_edge_quantizer", ("min-max", "octav"), "model_float.tflite"),
    "aimet": (["aimet-onnx==2.42.0"], "aimet_onnx", ("min-max", "tf-enhanced", "seq-mse", "adaround"),
              "model_float.onnx"),
    "mct": (["tensorflow==2.15.*", "model-compression-toolkit==2.6.1"], "model_compression_toolkit", ("imx500",),
            "model"),
}

# the runtime NNCF's files are made for; ONNX Runtime as in this environment, to time against
OPENVINO = (["openvino==2026.4.1", f"onnxruntime=={version('onnxruntime')}", "numpy"], "openvino")

SHAPE_OPS = {"SHAPE", "RESHAPE", "STRIDED_SLICE", "PACK", "SQUEEZE", "EXPAND_DIMS"}


def main() -> None:
    from shared_imagenet_drift import shared_split, split_arguments  # this folder: the same fixed split

    parser = split_arguments(__doc__.splitlines()[0], "/tmp/mobiledeploy-other-quantizers")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="seeded splits (default: --seed)")
    parser.add_argument("--tools", nargs="+", choices=sorted(TOOLS), default=list(TOOLS))
    parser.add_argument("--venvs", type=Path, default=Path("/tmp/mobiledeploy-quantizer-venvs"))
    parser.add_argument("--aimet-iterations", type=int, default=1000,
                        help="AdaRound iterations a layer (AIMET suggests 10,000: about an hour in all here)")
    parser.add_argument("--no-openvino", action="store_true", help="do not run NNCF's files on OpenVINO")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    model = args.shared / "models" / "mobilenet_v1_0.25_224.h5"
    if not model.is_file():
        raise SystemExit(f"{model} not found: this benchmark needs the shared ImageNet model (--shared)")
    pythons = {tool: tool_python(tool, *TOOLS[tool][:2], args.venvs) for tool in args.tools}
    if "nncf" in args.tools and not args.no_openvino:
        pythons["openvino"] = tool_python("openvino", *OPENVINO, args.venvs)
    seeds = args.seeds or [args.seed]
    splits: dict[str, list[tuple[float, float, float]]] = {}
    for seed in seeds:
        work = args.work / f"split-{seed}"
        calib, evaluation, labels = shared_split(args.shared, work / "split", seed)
        for name, figures in _compare(model, calib, evaluation, labels, work, pythons, args.aimet_iterations, seed):
            splits.setdefault(name, []).append(figures)
    if len(seeds) > 1:
        print(f"\nmean of {len(seeds)} splits (seeds {' '.join(map(str, seeds))})")
        print(f"{'file':<40}{'vs float':>9}{'min':>8}{'max':>8}{'agree':>8}{'min':>7}{'SQNR':>7}")
        for name, rows in splits.items():
            change, agree, sqnr = (np.array(column) for column in zip(*rows))
            print(f"{name:<40}{change.mean():>+9.2f}{change.min():>+8.2f}{change.max():>+8.2f}"
                  f"{agree.mean():>8.1%}{agree.min():>7.1%}{sqnr.mean():>7.1f}")


def tool_python(tool: str, requirements: list[str], module: str, venvs: Path) -> Path:
    """The Python of ``tool``'s own virtualenv (``module`` proves it installed), made and
    installed on first use."""
    python = venvs / tool / "bin" / "python"
    if python.is_file() and subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0:
        return python
    print(f"installing {' '.join(requirements)} into {venvs / tool} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", venvs / tool], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *requirements], check=True)
    return python


def _compare(model, calib, evaluation, labels, work: Path, pythons: dict, iterations: int,
             seed: int) -> list[tuple[str, tuple[float, float, float]]]:
    """Quantize with mobiledeploy and every tool on one split, print the table; returns each
    int8 file's (top-1 change in points, agreement, SQNR)."""
    import mobiledeploy
    from mobiledeploy import manifest
    from mobiledeploy.evaluation.builds import evaluate_build
    from mobiledeploy.data.calibration import read_batch
    from mobiledeploy.data.images import list_images

    build = work / "build"
    started = time.perf_counter()
    mobiledeploy.quantize(model, calib, build, num_calib=200, num_holdout=0, overwrite=True)
    seconds = {"model_int8.tflite": time.perf_counter() - started}
    seconds["model_int8.onnx"] = seconds["model_int8.tflite"]  # one run builds both
    preprocessing = manifest.read(build).preprocessing
    calib_npy = work / "calib.npy"
    np.save(calib_npy, read_batch(list_images(calib), preprocessing), allow_pickle=False)

    files, versions = [], {}
    for tool, python in pythons.items():
        if tool not in TOOLS:
            continue
        _, _, variants, reads_file = TOOLS[tool]
        for variant in variants:
            source = model if reads_file == "model" else build / reads_file
            out = work / f"{tool}-{variant}{'.tflite' if reads_file == 'model' else Path(reads_file).suffix}"
            command = [python, HERE / "helpers" / "quantizer_tools.py", tool, variant, source, calib_npy, out]
            if tool == "aimet":
                command.append(str(iterations))
            print(f"split {seed}: {tool} {variant} ...", flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"  failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}", flush=True)
                continue
            result = json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))
            versions[tool] = result["version"]
            seconds[str(out)] = result["seconds"]
            files.append(out)
    report = evaluate_build(build, evaluation, labels, compare=tuple(files))
    int8 = [build / "model_int8.tflite", build / "model_int8.onnx", *files]
    figures = _print(report, build, seconds, versions, seed, _latencies(int8, calib_npy))
    nncf = [f for f in files if f.name.startswith("nncf-")]
    if nncf and "openvino" in pythons:
        figures += _on_openvino(build, evaluation, labels, nncf, pythons["openvino"], work)
    return figures


def _on_openvino(build: Path, evaluation, labels, files: list[Path], python: Path,
                 work: Path) -> list[tuple[str, tuple[float, float, float]]]:
    """NNCF's files and mobiledeploy's int8 ONNX file on OpenVINO, scored against the float
    model on the evaluation images, mobiledeploy's file on ONNX Runtime as the reference row."""
    from mobiledeploy import manifest
    from mobiledeploy.data import datasets
    from mobiledeploy.evaluation import metrics as evaluate
    from mobiledeploy.runtime.runners import open_runner

    preprocessing = manifest.read(build).preprocessing
    data = datasets.open_data(evaluation, labels)
    x = np.concatenate(list(datasets.iter_batches(data, preprocessing)))
    truth = np.asarray(data.labels)
    inputs, out_dir = work / "eval.npy", work / "openvino"
    np.save(inputs, x, allow_pickle=False)
    out_dir.mkdir(exist_ok=True)
    ours = build / "model_int8.onnx"
    done = subprocess.run([python, HERE / "helpers" / "openvino_run.py", inputs, out_dir, ours, *files],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  OpenVINO failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}", flush=True)
        return []
    result = json.loads(next(line for line in reversed(done.stdout.splitlines()) if line.startswith("{")))
    reference = open_runner(build / "model_folded.keras").run(x)
    mine = open_runner(ours).run(x)
    mine_hits = evaluate.sample_hits(reference, mine, truth)
    float_top1 = evaluate.topk_accuracy(reference, truth)
    print(f"\non {result['version']} (one thread), against the same float model; lead: mobiledeploy's int8 ONNX "
          "file on ONNX Runtime, paired; 1 image: a ratio to that file on ONNX Runtime")
    print(f"{'file':<40}{'top-1':>7}{'vs float':>9}{'agree':>8}{'SQNR':>7}{'convs int8/float':>17}"
          f"{'lead top-1 ±95%':>18}{'lead agree ±95%':>18}{'1 image':>9}")
    print(f"{'model_int8.onnx on ONNX Runtime':<40}{np.mean(mine_hits['top1']):>7.1%}"
          f"{100 * (np.mean(mine_hits['top1']) - float_top1):>+9.2f}{np.mean(mine_hits['agreement']):>8.1%}"
          f"{evaluate.sqnr_db(reference, mine):>7.1f}{'':>17}{'':>18}{'':>18}"
          f"{1000 * result['ours_onnxruntime_seconds']:>7.2f}ms")
    figures = []
    for path, run in result["files"].items():
        outputs = np.load(run["outputs"])
        hits = evaluate.sample_hits(reference, outputs, truth)
        interval = evaluate.paired_intervals(mine_hits, hits)
        top1, agree = float(np.mean(hits["top1"])), float(np.mean(hits["agreement"]))
        precision = run["precision"]
        convs = f"{sum(n for kind, n in precision.items() if kind in ('u8', 'i8'))}/{precision.get('f32', 0)}"
        lead = (f"{100 * (np.mean(mine_hits['top1']) - top1):+.2f} ±{100 * interval['top1']:.2f}",
                f"{100 * (np.mean(mine_hits['agreement']) - agree):+.1f} ±{100 * interval['agreement']:.1f}")
        name = f"{Path(path).name} on OpenVINO"
        print(f"{name:<40}{top1:>7.1%}{100 * (top1 - float_top1):>+9.2f}{agree:>8.1%}"
              f"{evaluate.sqnr_db(reference, outputs):>7.1f}{convs:>17}{lead[0]:>18}{lead[1]:>18}"
              f"{run['seconds'] / result['ours_onnxruntime_seconds']:>8.2f}x", flush=True)
        figures.append((name, (100 * (top1 - float_top1), agree, evaluate.sqnr_db(reference, outputs))))
    return figures


def _latencies(files: list[Path], calib_npy: Path) -> dict[str, float]:
    """Median time of one image on one thread per file, the files alternated in rounds (a
    shared machine drifts: only ratios within one run mean something)."""
    from helpers.openvino_run import median_times  # this folder; the same timing as on OpenVINO

    from mobiledeploy.runtime.runners import open_runner

    image = np.load(calib_npy)[:1]
    runners = {str(f): open_runner(f, num_threads=1) for f in files}
    return median_times({name: (lambda runner=runner: runner.run(image)) for name, runner in runners.items()})


def _print(report, build: Path, seconds: dict, versions: dict, seed: int,
           latency: dict[str, float]) -> list[tuple[str, tuple[float, float, float]]]:
    print(f"\nsplit of seed {seed}: {report.samples} evaluation images; every file starts from the same float "
          f"model and 200 calibration images; {', '.join(versions.values())}")
    print(f"{'file':<34}{'top-1':>7}{'vs float':>9}{'agree':>8}{'SQNR':>7}{'float ops':>10}"
          f"{'lead top-1 ±95%':>18}{'lead agree ±95%':>18}{'quantize s':>11}{'1 image':>9}")
    ours = {"tflite": report.row("model_int8.tflite"), "onnx": report.row("model_int8.onnx")}
    ref = report.row(report.reference)
    figures = []
    for row in report.rows:
        if row["precision"] != "int8":
            continue
        name = Path(row["artifact"]).name
        lead = ("", "")
        if row.get("compared"):
            mine = ours[row["format"]]
            interval = row["paired_ci95"][mine["artifact"]]
            lead = (f"{100 * (mine['top1'] - row['top1']):+.2f} ±{100 * interval['top1']:.2f}",
                    f"{100 * (mine['agreement'] - row['agreement']):+.1f} ±{100 * interval['agreement']:.1f}")
        print(f"{name:<34}{row['top1']:>7.1%}{100 * (row['top1'] - ref['top1']):>+9.2f}{row['agreement']:>8.1%}"
              f"{row['sqnr_db']:>7.1f}{_float_ops(row, build):>10}{lead[0]:>18}{lead[1]:>18}"
              f"{seconds.get(row['artifact'], float('nan')):>11.1f}{_ratio(row, build, latency):>9}", flush=True)
        figures.append((name, (100 * (row["top1"] - ref["top1"]), row["agreement"], row["sqnr_db"])))
    return figures


def _ratio(row: dict, build: Path, latency: dict[str, float]) -> str:
    """One image's time against mobiledeploy's int8 file of the same format (its own: in ms)."""
    ours = latency[str(build / f"model_int8.{row['format']}")]
    if not row.get("compared"):
        return f"{1000 * ours:.2f}ms"
    return f"{latency[row['artifact']] / ours:.2f}x"


def _float_ops(row: dict, build: Path) -> int:
    """How many compute operators the runtime runs in float in this file (not counting those that
    only read a float tensor's shape)."""
    path = Path(row["artifact"]) if row.get("compared") else build / row["artifact"]
    if row["format"] == "tflite":
        from mobiledeploy.export.tflite import float_op_counts

        return sum(n for op, n in float_op_counts(path).items() if op not in SHAPE_OPS)
    from mobiledeploy.runtime.onnx_session import float_ops_in, save_optimized_onnx

    with tempfile.TemporaryDirectory() as tmp:
        save_optimized_onnx(path, Path(tmp) / "optimized.onnx")
        return sum(float_ops_in(Path(tmp) / "optimized.onnx").values())


if __name__ == "__main__":
    main()
