"""``mobiledeploy quantize``: fold, calibrate, refine and export (see ``pipeline.quantize``)."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import click

from ..evaluation.gate import GateFailed
from ..jsonout import dumps
from ..options import PRECISIONS, PRESETS
from ..pipeline import quantize as run
from ..reports import HEADS
from . import terminal
from .console import Progress
from .params import PATH, SEED, Finite, Renamed, input_size_option, json_option, renamed, trust_option

DEFAULTS = PRESETS["default"]  # the defaults --help shows: the dataclass's own
CHOICES = {"preprocess": ("auto", "mobilenet", "unit", "raw"), "refine": ("adaround", "bias", "none"),
           "equalize": ("auto", "on", "off"), "activation_ranges": ("auto", "minmax", "mse"),
           "logit_floor": ("auto", "off"), "dither": ("spare", "off", "auto", "on")}


@click.command(epilog="Each option's trade-offs, with measurements: docs/commands/quantize.md")
@click.argument("model", type=PATH)
@click.option("--calib", required=True, type=PATH,
              help="Images like the ones the model will see: a folder, or a .npy/.npz of 0..255 pixels.")
@click.option("-o", "--output", default=Path("build"), show_default=True, type=PATH,
              help="Output folder, written all at once.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="default", show_default=True,
              help="default: every refinement; plain: the converters alone.")
@click.option("--precision", default=DEFAULTS.precision, show_default=True, type=click.Choice(PRECISIONS),
              help="int8: the smallest, fastest files. int16x8: 16-bit activations, int8 weights, for when int8 "
                   "drifts too far (often much slower: reference kernels). mixed: int8, with 16-bit activations "
                   "in the layers int8 hurts most until --max-disagreement is met. float16: half-size float "
                   "weights, for GPU delegates. dynamic: int8 weights, float activations. The int8 refinements "
                   "(dither, logit floor, narrowed ranges) apply to int8 and mixed; --io to int8.")
@click.option("--num-calib", default=DEFAULTS.num_calib, show_default=True, type=click.IntRange(min=1),
              help="Calibration images; 100-500 is plenty.")
@click.option("--num-holdout", default=DEFAULTS.num_holdout, show_default=True, type=click.IntRange(min=0),
              help="Images kept out of calibration, to measure drift on.")
@click.option("--seed", default=DEFAULTS.seed, type=SEED, help="Seed of the sampling [default: 0].")
@click.option("--preprocess", default=DEFAULTS.preprocess, show_default=True, type=click.Choice(CHOICES["preprocess"]),
              help="Pixel scaling; auto reads it off the model's first BatchNorm.")
@click.option("--crop-fraction", default=DEFAULTS.crop_fraction, show_default=True, type=Finite(0.1, 1.0),
              help="Resize to size/fraction, then center-crop.")
@input_size_option("Size for a model saved without one (224, 192x160).")
@click.option("--io", default=DEFAULTS.io, show_default=True, type=click.Choice(["int8", "uint8", "float"]),
              help="I/O type of the int8 TFLite file. uint8: camera pixels (0..255) go in as they are, "
                   "the output is uint8 with its scale.")
@click.option("--metadata", is_flag=True,
              help="Embed TFLite metadata (input normalization, image size, labels) so Android's Task Library "
                   "and ML Kit load the .tflite files without glue code.")
@click.option("--labels", type=PATH, metavar="PATH",
              help="Class names for --metadata: a file with one per line, or a folder of class folders "
                   "(sorted, as eval reads them).")
@click.option("--onnx-activations", default=DEFAULTS.onnx_activations, show_default=True, type=click.Choice(["int8", "uint8"]),
              help="uint8 for x86-64 with residual Adds; int8 for ARM.")
@click.option("--per-tensor", is_flag=True, help="One weight scale per tensor (some accelerators need it).")
@click.option("--refine", default=DEFAULTS.refine, show_default=True, type=click.Choice(CHOICES["refine"]),
              help="Fit weight rounding and biases to the calibration images.")
@click.option("--equalize", default=DEFAULTS.equalize, show_default=True, type=click.Choice(CHOICES["equalize"]),
              help="Cross-layer equalization (auto: with --per-tensor).")
@click.option("--activation-ranges", default=DEFAULTS.activation_ranges, show_default=True,
              type=click.Choice(CHOICES["activation_ranges"]),
              help="Narrow the int8 ranges of tensors no ReLU bounds (auto).")
@click.option("--logit-floor", default=DEFAULTS.logit_floor, show_default=True, type=click.Choice(CHOICES["logit_floor"]),
              help="Floor the logits before a softmax: a finer int8 step.")
@click.option("--dither", default=DEFAULTS.dither, show_default=True, type=click.Choice(CHOICES["dither"]),
              help="Shifted copies of first-conv channels for a finer grid.")
@click.option("--rounding-samples", default=DEFAULTS.rounding_samples, type=click.IntRange(min=1), hidden=True)
@click.option("--rounding-positions-per-weight", default=DEFAULTS.rounding_positions_per_weight, type=Finite(min=0),
              hidden=True)
@click.option("--keep-float", multiple=True, metavar="LAYER",
              help="Keep this conv/Dense layer in float (repeatable).")
@click.option("--max-disagreement", type=Finite(min=0, max=100), metavar="PERCENT",
              help="Keep layers in float (with --precision mixed: give them 16-bit activations) until the "
                   "quantized files disagree with float on at most PERCENT of the held-out images "
                   "[mixed's default: 1].")
@click.option("--max-drop", "max_drop_old", type=Finite(min=0, max=100), cls=Renamed, new="--max-disagreement",
              target="max_disagreement", note=" (a share of disagreeing images, not check's top-1 drop)")
@click.option("--head", default=DEFAULTS.head, show_default=True, type=click.Choice(["auto", *HEADS]),
              help="How outputs become classes.")
@trust_option
@click.option("--overwrite", is_flag=True, help="Replace an existing build folder.")
@json_option("the result")
@click.pass_context
def quantize(ctx: click.Context, model: Path, calib: Path, output: Path, preset: str, as_json: bool,
             per_tensor: bool, **given) -> None:
    """Fold BatchNorm, calibrate int8 and write TFLite and ONNX files of MODEL.

    MODEL is a .h5 or .keras file or a Keras 2 SavedModel folder. Prints how far each int8 file
    drifts from the float model on held-out images.
    """
    given["max_disagreement"] = renamed(ctx, "max_disagreement", given["max_disagreement"])
    names = {f.name for f in fields(PRESETS[preset])}
    # what the command line says; the rest comes from the preset
    chosen = {k: v for k, v in given.items() if k in names and ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}
    if given["max_disagreement"] is not None:
        chosen["max_disagreement"] = given["max_disagreement"]
    options = replace(PRESETS[preset], **chosen, per_channel=not per_tensor and PRESETS[preset].per_channel)
    if options.trust_model_code:
        click.echo("warning: --trust-model-code: code stored in the model file may run", err=True)
    with Progress(enabled=not as_json) as progress:
        result = run(model, calib, output, options, progress.update)
    if as_json:
        click.echo(dumps(result.to_dict(), "quantize"))
    else:
        terminal.print_quantize(result)
    mixed = result.mixed_precision
    if mixed is not None and not mixed.met:
        where = "with 16-bit activations" if mixed.kept_in == "int16" else "in float"
        raise GateFailed(
            f"--max-disagreement {mixed.max_disagreement:g} not met: with {len(mixed.float_layers)} layers {where} "
            f"the quantized files still disagree with float on {mixed.agreement_loss:.1f}% "
            "of the held-out images; the files were written (raise the budget, or check the calibration images)")
