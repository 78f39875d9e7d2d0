"""``mobiledeploy quantize``: fold, calibrate, refine and export (see ``pipeline.quantize``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from . import terminal
from .params import SEED, Finite
from ..reports import HEADS


def parse_size(ctx, param, value: str | None) -> tuple[int, int] | None:
    """The --input-size callback: '224' -> (224, 224); '192x160' -> (192, 160)."""
    if value is None:
        return None
    parts = value.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return int(parts[0]), int(parts[-1])
    raise click.BadParameter(f"'{value}': expected a size in pixels, 224, or height x width, 192x160")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--calib", "calib", required=True, type=click.Path(path_type=Path),
              help="Calibration data: a folder of real images (searched recursively), or a "
                   ".npy/.npz array (N,H,W,C) of 0..255 pixels. Use images like the ones the model "
                   "will see in production; blank or random images give bad int8 ranges.")
@click.option("-o", "--output", default=Path("build"), show_default=True, type=click.Path(path_type=Path),
              help="Output folder. It appears complete or not at all.")
@click.option("--num-calib", default=200, show_default=True, type=click.IntRange(min=1),
              help="Images used for calibration. 100-500 is plenty for MobileNets; more costs time.")
@click.option("--num-holdout", default=100, show_default=True, type=click.IntRange(min=0),
              help="Further images, not used for calibration, on which int8 drift is measured.")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of the calibration sampling: same seed, same files.")
@click.option("--preprocess", default="auto", show_default=True,
              type=click.Choice(["auto", "mobilenet", "unit", "raw"]),
              help="Pixel scaling. mobilenet: x/127.5-1 (keras.applications MobileNets); unit: x/255; "
                   "raw: unchanged (model has its own Rescaling, or arrays are already scaled). auto: the one "
                   "the model was trained with, read off the statistics of the BatchNorm after its first conv; "
                   "without them, raw when the model starts with a Rescaling/Normalization layer, else "
                   "mobilenet. Name one only to override what auto reads.")
@click.option("--crop-fraction", default=0.875, show_default=True, type=Finite(0.1, 1.0),
              help="Center-crop fraction: resize the shorter side to size/fraction, then crop. 0.875 is "
                   "the ImageNet evaluation standard (256 -> 224); 1.0 keeps the whole image.")
@click.option("--input-size", "input_size", callback=parse_size, metavar="H[xW]",
              help="Height and width to deploy at, for a model saved without a fixed input size "
                   "(input_shape=(None, None, 3)). int8 files have one fixed size; pick the one the model "
                   "was trained at (224, 192, 160 or 128 for keras.applications MobileNets).")
@click.option("--io", "io", default="int8", show_default=True, type=click.Choice(["int8", "float"]),
              help="Input/output type of the int8 TFLite file. int8 for microcontrollers and NPUs that "
                   "want integer I/O; float to feed float images and let the model quantize them.")
@click.option("--onnx-activations", default="int8", show_default=True, type=click.Choice(["int8", "uint8"]),
              help="Activation type of model_int8.onnx (its weights are int8 either way; the values are the "
                   "same, one grid shifted by 128). int8 for ARM, where ONNX Runtime fuses every int8 operator. "
                   "uint8 when the file will run on x86-64 and has residual Adds (MobileNetV2): ONNX Runtime "
                   "there fuses int8 Adds only with uint8 activations and otherwise runs them and the "
                   "convolutions beside them in float.")
@click.option("--per-tensor", is_flag=True,
              help="Per-tensor weight scales instead of per-channel. Only for accelerators that require "
                   "it: folded MobileNet depthwise weights collapse under one scale per tensor unless "
                   "equalized (see --equalize).")
@click.option("--refine", default="adaround", show_default=True, type=click.Choice(["adaround", "bias", "none"]),
              help="Prepare the float model for int8 before the converters see it. adaround: round each weight "
                   "up or down to best match the float layer on calibration images, then absorb the remaining "
                   "mean error into the biases (best int8 accuracy; seconds to a few minutes). bias: bias "
                   "correction only (faster). none: no refinement (with --logit-floor off: what the plain "
                   "converters give).")
@click.option("--equalize", default="auto", show_default=True, type=click.Choice(["auto", "on", "off"]),
              help="Cross-layer equalization: rescale each conv -> ReLU -> conv pair so their channels span "
                   "equal ranges (the function is unchanged below each ReLU6's cap; channels that never turn on "
                   "in the calibration images are zeroed). It is what makes --per-tensor usable on MobileNets; "
                   "auto runs it only with --per-tensor, where it matters. on: also with per-channel weights, "
                   "where it measured mixed (better agreement on the shared 0.25 MobileNet, worse on an unseen "
                   "MobileNetV2).")
@click.option("--activation-ranges", default="auto", show_default=True,
              type=click.Choice(["auto", "minmax", "mse"]),
              help="minmax: each activation's int8 range is its calibration min..max (the converters' own). "
                   "auto: narrow the range of each tensor no ReLU bounds (MobileNetV2's linear bottlenecks and "
                   "residual adds, whose long tails waste int8 levels) where that lowers its rounding + clipping "
                   "error on the calibration images. mse: that, and also clip each ReLU6 the same way.")
@click.option("--logit-floor", default="auto", show_default=True, type=click.Choice(["auto", "off"]),
              help="auto: when the model ends in Conv2D/Dense -> softmax, raise the logits that are far below "
                   "the top to a floor chosen on the calibration images, so the int8 logits get a finer step "
                   "(the softmax barely changes; near-ties between the top classes stop collapsing onto one "
                   "int8 level). off: the logits keep their full calibrated range.")
@click.option("--dither", default="spare", show_default=True, type=click.Choice(["spare", "off", "auto", "on"]),
              help="When the model starts conv -> ReLU -> depthwise -> 1x1 conv (MobileNets), give first-conv "
                   "channels that stay in the ReLU's linear range copies a fraction of an int8 step apart; the "
                   "1x1 conv averages them, so k copies leave 1/k^2 of that tensor's int8 rounding noise (the "
                   "function is unchanged). spare (default): put the copies only into first-conv channels the "
                   "model cannot use (proved never on, or feeding a depthwise channel proved never on, for any "
                   "input in the calibrated range), so the layer shapes and the work stay the plain converters'; "
                   "a model without such channels is left alone. off: no copies. auto: append copies, up to a "
                   "multiple of 8 channels, to thin first layers (16 channels or fewer with them), not with "
                   "--per-tensor (its coarse weight grid ate the gain); pick it for x86-64 targets, where those "
                   "copies cost no time (on the 0.25 MobileNet: +0.6 to 0.9 dB output SQNR, top-1 within noise), "
                   "not for phones: under emulation their ARM kernels did 1.14-1.22x the work. on: also for "
                   "wider first layers, when accuracy matters more than latency (7-18% slower on a MobileNetV2 1.0).")
@click.option("--rounding-samples", default=64, show_default=True, type=click.IntRange(min=1),
              help="Calibration images whose statistics drive adaptive rounding (small late layers read more, "
                   "see below). More is slower and measured no better: 32, 128 and 200 gave the shared ImageNet "
                   "MobileNet 0.1-0.3 points lower top-1 than 64 (at most 0.1 dB more output SQNR) and the "
                   "reference model 0.6-1.6 dB less SQNR (docs/quantization-experiments.md).")
@click.option("--rounding-positions-per-weight", default=64.0, show_default=True, type=Finite(min=0),
              help="Adaptive rounding decides each layer's weights on at least this many calibration positions "
                   "per weight of its fan-in, reading more than --rounding-samples images where the layer is "
                   "small. Layers that even all calibration images leave short (the late layers, the "
                   "classifier) may fit their noise: there the rounding is fitted on three of four folds of the "
                   "images, scored on the fourth, and replaced by nearest rounding unless it wins on every fold. "
                   "0 rounds every layer adaptively, unchecked.")
@click.option("--keep-float", "keep_float", multiple=True, metavar="LAYER",
              help="Run this convolution/Dense layer in float inside the int8 files (repeatable). For "
                   "targets with float kernels next to int8 ones (CPUs, GPUs), when one layer ruins accuracy.")
@click.option("--max-drop", type=Finite(min=0, max=100), default=None,
              help="Accuracy-aware mixed precision: while an int8 file disagrees with the float model's top-1 "
                   "on more than this many percent of the held-out images (a bound on its top-1 loss that "
                   "needs no labels), keep one more layer in float, the one that loses most SQNR. At most "
                   "8 layers; exit 3 if the budget is still not met. Costs one export per layer.")
@click.option("--head", default="auto", show_default=True,
              type=click.Choice(["auto", *HEADS]),
              help="How the outputs become classes, for agreement, top-1 and --max-drop. auto reads it off the "
                   "model: one output is a binary decision (sigmoid: above 0.5, else a logit: above 0); several "
                   "are classes (argmax), or labels (multi-label: each sigmoid on above 0.5, and agreement asks "
                   "every label to match) when they end in a sigmoid. Pick label-logits for a multi-label model "
                   "trained from logits (no sigmoid in it: each label on above 0), which auto reads as classes.")
@click.option("--trust-model-code", is_flag=True,
              help="Allow Lambda layers and custom objects, which run code stored in the model file. "
                   "Only for files you wrote or vetted.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout (for machines).")
def quantize(model: Path, calib: Path, output: Path, num_calib: int, num_holdout: int, seed: int,
             preprocess: str, crop_fraction: float, input_size: tuple[int, int] | None, io: str,
             onnx_activations: str, per_tensor: bool, refine: str, equalize: str, activation_ranges: str, logit_floor: str,
             dither: str, rounding_samples: int, rounding_positions_per_weight: float, keep_float: tuple[str, ...],
             max_drop: float | None, head: str, trust_model_code: bool, overwrite: bool, as_json: bool) -> None:
    """Fold BatchNorm, calibrate int8, and export TFLite and ONNX files.

    Writes model_folded.keras, model_float.tflite, model_int8.tflite, model_float.onnx,
    model_int8.onnx and manifest.json to the output folder, and prints the int8 drift
    against the float model on held-out images.
    """
    from ..pipeline import quantize as run
    from ..options import QuantizeOptions

    options = QuantizeOptions(
        num_calib=num_calib, num_holdout=num_holdout, seed=seed, preprocess=preprocess,
        crop_fraction=crop_fraction, input_size=input_size, io=io, onnx_activations=onnx_activations,
        per_channel=not per_tensor, refine=refine,
        equalize=equalize, activation_ranges=activation_ranges, logit_floor=logit_floor, dither=dither,
        rounding_samples=rounding_samples,
        rounding_positions_per_weight=rounding_positions_per_weight,
        keep_float=keep_float, max_drop=max_drop, head=head,
        trust_model_code=trust_model_code, overwrite=overwrite,
    )
    if trust_model_code:
        click.echo("warning: --trust-model-code: code stored in the model file may run", err=True)
    with terminal.Progress(enabled=not as_json) as progress:
        result = run(model, calib, output, options, progress.update)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        terminal.print_quantize(result)
    if result.mixed_precision is not None and not result.mixed_precision.met:
        from ..evaluation.gate import GateFailed

        raise GateFailed(
            f"--max-drop {max_drop:g} not met: with {len(result.mixed_precision.float_layers)} layers in float the "
            f"int8 files still disagree with float on {result.mixed_precision.agreement_loss:.1f}% of the held-out "
            "images; the files were written (raise the budget, or check the calibration images)")
