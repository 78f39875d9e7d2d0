"""Parameter types and option groups shared by the commands, so an option means the same thing,
in the same unit, checked the same way, wherever it appears; and the old spellings that keep
working for one release, with a warning."""

from __future__ import annotations

import math
from pathlib import Path

import click

from ..errors import MobiledeployError
from ..limits import MAX_WORKERS
from ..runtime import cluster, devices
from ..runtime.arm.emulation import CPUS, DEFAULT_CPU



class Finite(click.FloatRange):
    """A float in a range that is also finite: 'nan' and 'inf' parse as floats and would slip
    through a plain range (nan compares false with every bound) into the stages."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


SEED = click.IntRange(min=0, max=2**32 - 1)  # what numpy's seeded generators take
PATH = click.Path(path_type=Path)


def parse_size(ctx, param, value: str | None) -> tuple[int, int] | None:
    """The --input-size callback: '224' -> (224, 224); '192x160' -> (192, 160)."""
    if value is None:
        return None
    parts = value.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() and 0 < int(p) <= 16384 for p in parts):
        return int(parts[0]), int(parts[-1])
    raise click.BadParameter(f"'{value}': expected a size in pixels, 224, or height x width, 192x160")


def _device(ctx, param, value: str) -> str:
    try:
        devices.check(value)
    except MobiledeployError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def ray_address(ctx, param, value: str | None) -> str | None:
    if value is not None:
        try:
            cluster.check_address(value)
        except MobiledeployError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


class Renamed(click.Option):
    """An option's old spelling: hidden from --help, still accepted for one release with a warning,
    its value handed to the new option's parameter (``renamed(ctx, name, value)``)."""

    def __init__(self, *args, new: str, target: str, note: str = "", **kwargs):
        super().__init__(*args, hidden=True, expose_value=False, **kwargs)
        self.new, self.target, self.note = new, target, note

    def handle_parse_result(self, ctx, opts, args):
        value, args = super().handle_parse_result(ctx, opts, args)
        if self.name in opts:
            click.echo(f"warning: {self.opts[0]} is now {self.new}{self.note}; the old spelling will be removed "
                       "in the next release", err=True)
            ctx.meta.setdefault("renamed", {})[self.target] = value
        return value, args


def renamed(ctx: click.Context, name: str, value):
    """The value of option ``name``, from its old spelling when that was given."""
    return ctx.meta.get("renamed", {}).get(name, value)


# --- option groups ------------------------------------------------------------------------

DATA_HELP = ("Labelled images: a folder with one sub-folder per class (classes in sorted order, or as "
             "--labels lists them), or an .npz with x and y. A plain image folder gives label-free drift.")
DEVICE_HELP = f"{devices.HELP} CPU: {', '.join(CPUS)} (default {DEFAULT_CPU})."


def data_options(command):
    """--data and --labels, as eval, check and analyze read them."""
    command = click.option("--labels", type=PATH, help="Class names, one per line, in model output order "
                           "(when the folders cover only some classes, or are not named in that order).")(command)
    return click.option("--data", required=True, type=PATH, help=DATA_HELP)(command)


def device_option(extra: str = ""):
    """--device, and --remote-python for a board over SSH."""
    def decorate(command):
        command = click.option(
            "--remote-python", metavar="PATH",
            help="With --device ssh://...: the Python on the board to run the files with (it needs numpy, "
                 "onnxruntime and ai-edge-litert). Without it, mobiledeploy sets up its own there on first use, "
                 "with this machine's versions of them.")(command)
        return click.option("--device", default="cpu", show_default=True, callback=_device,
                            help=DEVICE_HELP + extra)(command)
    return decorate


SHARDS_HELP = ("Run the .tflite/.onnx files in N processes at once, each on a share of the images; the results are "
               "the same as with 1. Worth it under ARM emulation (--device arm:...), where each process uses one "
               "core: pick the number of cores. On this CPU the runtimes already use every core.")
SHARDS_RAY_HELP = ("Run the shards as tasks on a Ray cluster: 'auto' (the one started on this machine with ray start, "
                   "or $RAY_ADDRESS), host:6379 or ray://host:10001. Each node runs its share on its own CPU (or "
                   "emulated --device arm:CPU) with the same results; --workers defaults to the cluster's CPUs. "
                   "Needs pip install 'mobiledeploy[ray]' here and on the nodes.")


def workers_option(workers_help: str = SHARDS_HELP, ray_help: str = SHARDS_RAY_HELP):
    """--workers and --ray: N local processes at once, or a Ray cluster (eval's and check's shares
    of the images by default; a command with other work says what its workers do)."""
    def decorate(command):
        command = click.option("--ray", metavar="ADDRESS", callback=ray_address, help=ray_help)(command)
        return click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1, max=MAX_WORKERS),
                            metavar="N", help=workers_help)(command)
    return decorate


def batch_size_option(default: int, about: str):
    """--batch-size: images per runtime call, in every command (bench's --batch before)."""
    def decorate(command):
        command = click.option("--batch", "batch_old", type=click.IntRange(min=1, max=4096), cls=Renamed,
                               new="--batch-size", target="batch_size")(command)
        return click.option("--batch-size", default=default, show_default=True, type=click.IntRange(min=1, max=4096),
                            help=about)(command)
    return decorate


def json_option(what: str):
    """--json: print ``what`` as JSON on stdout instead of the tables, in every command."""
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON on stdout.")


def compare_option(extra: str = ""):
    return click.option("--compare", multiple=True, type=PATH, metavar="FILE",
                        help="Also score this .tflite/.onnx file (repeatable; e.g. the int8 file published with "
                             "the model) on the same images against the same float model." + extra)


def trust_option(command):
    return click.option("--trust-model-code", is_flag=True,
                        help="Allow Lambda layers and custom objects (run code from the file).")(command)


def input_size_option(about: str):
    return click.option("--input-size", callback=parse_size, metavar="H[xW]", help=about)
