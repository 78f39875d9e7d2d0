"""Run the worker on a real board over SSH (``--device ssh://user@host[:port]``).

The board runs the same numpy-only worker as ARM emulation does, with its own Python and the
runtimes' wheels for its CPU: either the ``--remote-python`` the user names, or a virtual
environment this module provisions on first use in the board's cache folder
(``$MOBILEDEPLOY_CACHE``, else ``~/.cache/mobiledeploy``, under ``board/``), with the host's
versions of numpy, onnxruntime and ai-edge-litert, so that board and host compare like with like.

The code travels as one zip of this package's Python files, named by its hash; artifacts are
kept under their sha256, and the worker checks that hash on the board before it loads the file.
Each run gets a folder of its own on the board, removed afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import MobiledeployError
from ..inputs import parse_json
from ..manifest import sha256
from .arm.emulation import WHEELS, wheel_versions
from .host import WorkerDied, checked_result
from .ssh import Address, BoardUnreachable, Connection, parse_address, quote

RECIPE = 1
WORKER = "mobiledeploy.runtime.worker"
INSTALL_SECONDS = 1800  # pip on a small board is slow; past this the provisioning counts as failed
CACHE = 'printf %s "${MOBILEDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mobiledeploy}"'


@dataclass(frozen=True)
class Board:
    """A board reachable over SSH, with a Python that runs the worker there."""

    address: Address
    python: str  # the interpreter on the board
    root: str  # the board's cache folder for mobiledeploy
    code: str  # the zip of this package on the board
    runtimes: tuple[tuple[str, str], ...]  # (package, version) of the board's numpy and runtimes

    kind = "board"

    @property
    def device(self) -> str:
        return self.address.label

    def process(self) -> Board:
        return self

    def run(self, spec: dict, workdir: Path, label: str) -> dict:
        """Copy the artifact (unless the board has it) and the inputs over, run the worker there,
        fetch its outputs into the paths ``spec`` names. A dropped connection is ``WorkerDied``
        (a shard runs again); a board that cannot be reached again is ``BoardUnreachable``."""
        with Connection(self.address) as board:  # a board that cannot be reached: raised as it is
            try:
                folder = board.check(quote("mkdir", "-p", f"{self.root}/runs") + " && "
                                     + quote("mktemp", "-d", f"{self.root}/runs/XXXXXXXX"),
                                     "make a folder for the run", "check the board's disk space").strip()
                try:
                    return self._run_in(board, folder, spec, workdir, label)
                finally:
                    try:
                        board.run(quote("rm", "-rf", folder))
                    except BoardUnreachable:
                        pass  # gone with the connection; the board's next run is unaffected
            except BoardUnreachable as lost:  # dropped mid-run: the worker's result is lost, not wrong
                raise WorkerDied(f"{label}: {lost}") from None

    def _run_in(self, board: Connection, folder: str, spec: dict, workdir: Path, label: str) -> dict:
        remote = {**spec, **self._artifact(board, spec), "result": f"{folder}/result.json"}
        if isinstance(spec.get("inputs"), list):  # mode "run": batches in, outputs back
            remote["inputs"] = [f"{folder}/in_{i:05d}.npy" for i in range(len(spec["inputs"]))]
            remote["outputs"] = [f"{folder}/out_{i:05d}.npy" for i in range(len(spec["outputs"]))]
            for local, there in zip(spec["inputs"], remote["inputs"]):
                board.put(local, there)
        elif spec.get("inputs"):  # mode "bench": one batch to time
            remote["inputs"] = f"{folder}/inputs.npy"
            board.put(spec["inputs"], remote["inputs"])
        if "workdir" in spec:
            remote["workdir"] = folder
        board.put_bytes(json.dumps(remote).encode(), f"{folder}/spec.json")
        command = (f"cd {quote(folder)} && env PYTHONPATH={quote(self.code)} PYTHONNOUSERSITE=1 "
                   f"PYTHONDONTWRITEBYTECODE=1 {quote(self.python, '-m', WORKER, 'spec.json')}")
        status, _, stderr = board.run(command)
        result = _parsed(board.read_bytes(remote["result"])) if board.exists(remote["result"]) else {}
        if result.get("damaged"):  # removed, so that the next run sends it again
            board.run(quote("rm", "-f", remote["path"]))
            raise MobiledeployError(f"{label}: the copy kept on {self.device} no longer matches the file's sha256 "
                                    f"({result['error']}); it was removed: run the command again to send it anew")
        result = checked_result(result, status, stderr, self.device, label)
        for local, there in zip(spec.get("outputs", ()), remote.get("outputs", ())):
            board.get(there, local)
        if spec.get("optimized_graph") and board.exists(f"{folder}/optimized.onnx"):
            board.get(f"{folder}/optimized.onnx", Path(spec["workdir"]) / "optimized.onnx")
        return result

    def _artifact(self, board: Connection, spec: dict) -> dict:
        """The artifact's path on the board and its sha256, copied there unless already kept."""
        local = Path(spec["path"])
        digest = sha256(local)
        there = f"{self.root}/artifacts/{digest}{local.suffix.lower()}"
        if not board.exists(there):
            board.put(local, there)
        return {"path": there, "sha256": digest}


def _parsed(raw: bytes) -> dict:
    """A worker's result as the board wrote it, read as hostile (``parse_json``: size, nesting,
    integers); anything but a JSON object counts as no result."""
    try:
        result = parse_json(raw, "the board's result")
    except MobiledeployError:
        return {}
    return result if isinstance(result, dict) else {}


def open_board(device: str, remote_python: str | None = None, say: Callable[[str], None] | None = None) -> Board:
    """Connect to the board of ``device`` and make it ready: its cache folder, this package's code,
    a Python with the runtimes (``remote_python`` or one provisioned there), checked by importing
    them on the board."""
    say = say or (lambda message: None)
    address = parse_address(device)
    say(f"connect to {address.label}")
    with Connection(address) as board:
        root = board.check(CACHE, "find its cache folder", "check that the user has a home folder").strip()
        root = f"{root}/board"
        board.check(quote("mkdir", "-p", f"{root}/code", f"{root}/artifacts", f"{root}/runs"),
                    f"make {root}", "check the board's disk space and permissions")
        data, digest = _code_zip()
        code = f"{root}/code/{digest}.zip"
        if not board.exists(code):
            board.put_bytes(data, code)
        python = remote_python or _provision(board, root, say)
        runtimes = _probe(board, python, code, remote_python is not None)
    return Board(address, python, root, code, runtimes)


def _probe(board: Connection, python: str, code: str, given: bool) -> tuple[tuple[str, str], ...]:
    """The board's versions of numpy and the runtimes, imported there by the worker's Python."""
    script = ("import importlib.metadata as m, json\n"
              f"print(json.dumps({{n: m.version(n) for n in {list(WHEELS)!r}}}))")
    fix = ("install numpy, onnxruntime and ai-edge-litert for it, or leave out --remote-python to let "
           "mobiledeploy set up its own" if given else "run again with --remote-python naming a Python that has them")
    out = board.check(f"env PYTHONPATH={quote(code)} {quote(python, '-c', script)}",
                      f"find numpy, onnxruntime and ai-edge-litert for {python}", fix, timeout=120)
    lines = out.strip().splitlines()
    try:
        versions = parse_json(lines[-1], "the versions") if lines else None
    except MobiledeployError:
        versions = None
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise MobiledeployError(f"{board.address.label}: {python} printed no versions ({out[:120]!r}); {fix}")
    return tuple(sorted((str(k), v) for k, v in versions.items()))


def _provision(board: Connection, root: str, say: Callable[[str], None]) -> str:
    """A virtual environment on the board with the host's versions of the runtimes (kept and
    reused; built again from scratch when a previous try did not finish)."""
    versions = wheel_versions()
    venv = f"{root}/python/recipe{RECIPE}-" + "-".join(f"{n}{v}" for n, v in versions.items())
    if board.exists(f"{venv}/complete"):
        return f"{venv}/bin/python"
    say(f"set up Python on {board.address.label} (numpy, onnxruntime, ai-edge-litert; first use only)")
    fix = "pass --remote-python with a Python that has numpy, onnxruntime and ai-edge-litert"
    board.check(quote("rm", "-rf", venv) + " && " + quote("python3", "-m", "venv", venv),
                "make a virtual environment with python3 -m venv",
                "install python3 and python3-venv on the board, or " + fix, timeout=600)
    board.check(quote(f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                      *(f"{name}=={version}" for name, version in versions.items())),
                "install " + ", ".join(f"{n}=={v}" for n, v in versions.items()),
                "check the board's network and that these versions have wheels for its CPU, or " + fix,
                timeout=INSTALL_SECONDS)
    board.check(quote("touch", f"{venv}/complete"), "mark the environment complete", "check the board's disk")
    return f"{venv}/bin/python"


@functools.lru_cache(maxsize=1)
def _code_zip() -> tuple[bytes, str]:
    """(a zip of this package's Python files, its hash): the same bytes for the same code."""
    package = Path(__file__).resolve().parents[1]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            info = zipfile.ZipInfo(f"mobiledeploy/{path.relative_to(package).as_posix()}", (2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()[:16]
