"""Shards on a Ray cluster (``eval`` / ``check --ray auto|ADDRESS``).

Each shard is a Ray task. The task runs the very worker a local shard runs, in a process of its
own on the node that took it (that node's CPU, or its emulated ARM CPU for ``--device arm:CPU``),
so a cluster gives the outputs one process gives. The artifact's bytes and the batches travel
through Ray's object store; the outputs come back the same way and are written where the host
expects them, so ``host.outputs_of`` shards, joins and re-runs exactly as it does locally.

Ray's own task retries are off: a shard whose worker died is re-run by ``outputs_of`` (once), and
the report's warnings say so. Ray is optional: ``pip install 'mobiledeploy[ray]'``; every node
needs mobiledeploy installed.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MobiledeployError
from .arm import provisioning
from .arm.emulation import parse_device
from .host import Process, WorkerDied


@dataclass(frozen=True)
class RayCluster:
    """A connected Ray cluster that runs shards on ``device`` ("cpu" or "arm:<cpu>") of its nodes."""

    address: str
    device: str
    cpus: int  # the cluster's CPUs: the default number of shards

    @property
    def kind(self) -> str:
        return "cpu" if self.device == "cpu" else "emulated"

    @property
    def label(self) -> str:
        return f"the Ray cluster at {self.address}"

    def process(self) -> RayCluster:
        return self

    def run(self, spec: dict, workdir: Path, label: str) -> dict:
        """Run one shard's spec as a Ray task; its outputs are written to the spec's paths here."""
        import ray

        task = _shard_task()
        batches = [np.load(path, allow_pickle=False) for path in spec["inputs"]]
        settings = {k: v for k, v in spec.items() if k in ("format", "onnx_disabled")}
        artifact = ray.put(Path(spec["path"]).read_bytes())
        try:
            outputs = ray.get(task.remote(artifact, Path(spec["path"]).name, settings, batches, self.device))
        except ray.exceptions.RayTaskError as failed:
            cause = failed.cause
            if isinstance(cause, WorkerDied):
                raise WorkerDied(f"{label}: on {self.label}: {cause}") from None
            if isinstance(cause, MobiledeployError):
                raise MobiledeployError(str(cause)) from None
            raise WorkerDied(f"{label}: a task on {self.label} failed ({type(cause).__name__}: "
                             f"{str(cause).splitlines()[-1][:160] if str(cause) else ''})") from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.ObjectLostError) as lost:
            raise WorkerDied(f"{label}: a Ray worker on {self.label} died ({type(lost).__name__})") from None
        for path, values in zip(spec["outputs"], outputs):
            np.save(path, values, allow_pickle=False)
        return {"batches": len(outputs)}


def connect(address: str, device: str) -> RayCluster:
    """Join the Ray cluster at ``address`` ("auto": the one on this machine or $RAY_ADDRESS)."""
    if device.startswith("ssh://"):
        raise MobiledeployError(f"--ray runs the files on the cluster's nodes, --device {device} on a board; "
                                "pick one of them")
    cpu = parse_device(device)
    device = "cpu" if cpu is None else f"arm:{cpu}"
    try:
        import ray
    except ImportError:
        raise MobiledeployError("--ray needs Ray; install it with: pip install 'mobiledeploy[ray]'") from None
    _check_reachable(address)
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise MobiledeployError(f"--ray {address}: cannot join the Ray cluster ({reason}); start one with "
                                    "ray start --head, or pass its address (host:6379 or ray://host:10001)") from None
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:
        raise MobiledeployError(f"--ray {address}: the cluster offers no CPU to run tasks on")
    return RayCluster(address, device, cpus)


def check_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a Ray address, None for "auto"; anything else is refused in one line."""
    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in "/@?# "):
        raise MobiledeployError(f"--ray {address}: expected auto, host:port (the head's GCS, e.g. 10.0.0.5:6379) or "
                                "ray://host:port (Ray Client, port 10001)")
    return host, int(port)


def _check_reachable(address: str) -> None:
    """Refuse an address nothing answers at, at once (Ray itself keeps retrying for minutes)."""
    import socket

    where = check_address(address)
    if where is None:
        return
    host, port = where
    try:
        socket.create_connection((host.strip("[]"), port), timeout=10).close()
    except OSError as exc:
        raise MobiledeployError(f"--ray {address}: nothing answers there ({exc.strerror or exc}); start the head "
                                "with ray start --head, or check the address") from None


@functools.lru_cache(maxsize=1)
def _shard_task():
    import ray

    return ray.remote(max_retries=0, num_cpus=1)(run_shard)


def run_shard(artifact: bytes, name: str, settings: dict, batches: list[np.ndarray], device: str) -> list[np.ndarray]:
    """On a node: the shard's batches through the artifact, in a worker process of the node's own
    (its CPU, or its emulated ``arm:<cpu>``), as a local shard runs."""
    launcher = Process() if device == "cpu" else provisioning.target_for(device).process()
    with tempfile.TemporaryDirectory(prefix="mobiledeploy-shard-") as tmp:
        folder = Path(tmp)
        (folder / name).write_bytes(artifact)
        inputs, outputs = [], []
        for i, batch in enumerate(batches):
            inputs.append(str(folder / f"in_{i:05d}.npy"))
            outputs.append(str(folder / f"out_{i:05d}.npy"))
            np.save(inputs[-1], batch, allow_pickle=False)
        spec = {"mode": "run", "path": str(folder / name), **settings, "inputs": inputs, "outputs": outputs}
        launcher.run(spec, folder, name)
        return [np.load(path, allow_pickle=False) for path in outputs]
