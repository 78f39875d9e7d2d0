"""Thin click layer: parse, call one library function, print, exit code.

Exit codes are a contract for CI: 0 ok, 1 user error, 2 usage error, 3 gate failed.
"""

from __future__ import annotations

import logging
import signal
import threading

import click

from ..version import __version__
from ..errors import MobiledeployError
from ..staging import Terminated, published, terminate, terminated
from .arm import arm
from .evaluate import check, eval_command
from .measure import analyze, bench, inspect
from .quantize import quantize
from .sweep import sweep


class _Group(click.Group):
    """Turns user errors into one line on stderr and exit 1 (``--debug`` keeps the traceback),
    Ctrl-C into exit 130 and SIGTERM into 143, whatever error it surfaced as."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            click.echo(f"interrupted: {_what_was_written(exc)}", err=True)
            ctx.exit(130)
        except (Terminated, Exception) as exc:
            # a library may catch Terminated and raise its own error: after SIGTERM, that is one too
            if isinstance(exc, Terminated) or terminated():
                click.echo(f"terminated: {_what_was_written(exc)}", err=True)
                ctx.exit(143)
            if not isinstance(exc, MobiledeployError) or ctx.meta.get("debug"):
                raise
            click.echo(printable(f"error: {exc}"), err=True)
            ctx.exit(exc.exit_code)


def printable(text: str) -> str:
    """``text`` as any terminal can print it: file names that are not UTF-8 (which Python holds as
    lone surrogates) shown as escapes instead of failing the print."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _what_was_written(interruption: BaseException) -> str:
    """What an interrupted run leaves: nothing, or (stopped just after publishing) its output, or
    what the command says it keeps (a sweep's finished tasks)."""
    if getattr(interruption, "kept", None):
        return interruption.kept
    return "the output folder was written before it stopped" if published(interruption) else "nothing was written"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mobiledeploy")
@click.option("--debug", is_flag=True, help="Show Python tracebacks for user errors (for bug reports).")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Make a trained Keras MobileNet ready for phones and small ARM boards.

    \b
    mobiledeploy quantize model.h5 --calib calibration_data/ -o build/
    mobiledeploy eval build/ --data eval_images/            # accuracy and drift
    mobiledeploy check build/ --data eval_images/ --baseline baseline.json   # CI gate
    mobiledeploy bench build/ --device cpu                  # latency (or --device arm)
    mobiledeploy analyze build/ --data eval_images/ --html drift.html
    mobiledeploy inspect model.h5 --alpha 0.5               # params and MACs per layer
    mobiledeploy sweep sweep.toml -o sweep/                 # models x settings x devices
    """
    ctx.meta["debug"] = debug
    _quiet_libraries()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)


def _quiet_libraries() -> None:
    """TensorFlow, absl and tf2onnx log at INFO/WARNING by default; keep stderr for real problems."""
    for name in ("tensorflow", "absl", "tf2onnx", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)


main.add_command(quantize)
main.add_command(eval_command)
main.add_command(check)
main.add_command(bench)
main.add_command(inspect)
main.add_command(analyze)
main.add_command(sweep)
main.add_command(arm)
