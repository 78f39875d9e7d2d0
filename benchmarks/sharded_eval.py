"""eval with --workers and --ray: wall time of 1 and 2 local worker processes and of 2 shards on a
Ray cluster, side by side in one run.

    python benchmarks/sharded_eval.py [--work /tmp/md-sharded] [--device arm:cortex-a76] [--rounds 2]
                                      [--no-ray]

Quantizes the shared ImageNet MobileNet v1 0.25 once (defaults, into --work), then runs
``mobiledeploy eval BUILD --data IMAGES --device DEVICE --workers N --json`` on its 500 dev images
with N = 1 and 2, and with ``--ray ADDRESS --workers 2`` against a Ray head this script starts on
127.0.0.1 with 2 CPUs (stopped at the end), alternated over --rounds rounds (1, 2, ray, ray, 2,
1, ...: this machine is shared and its speed drifts), each in a fresh process. Prints each run's
seconds, the median time of each, the ratios to 1 worker, and whether the reports' rows are
identical (they must be). Under ARM emulation each worker is one qemu process on one core; on
this CPU (--device cpu) the runtimes already use every core, so more workers mostly add process
start-up. ~35 minutes for arm:cortex-a76 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODEL = SHARED / "models" / "mobilenet_v1_0.25_224.h5"
IMAGES = SHARED / "imagenet-dev" / "images"


def mobiledeploy(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mobiledeploy", *args], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if run.returncode != 0:
        sys.exit(f"mobiledeploy {args[0]} failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.perf_counter() - started, run


@contextmanager
def ray_head():
    """A Ray head on 127.0.0.1 with 2 CPUs for the run; its address."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    head = subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
                             "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
                             "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp,
                             "--object-store-memory", str(200 << 20)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(10)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        head.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/md-sharded"))
    parser.add_argument("--device", default="arm:cortex-a76")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-ray", action="store_true", help="only the local workers")
    args = parser.parse_args()
    if not MODEL.is_file():
        sys.exit(f"no shared model at {MODEL}")
    args.work.mkdir(parents=True, exist_ok=True)
    build = args.work / "build"
    if not (build / "manifest.json").is_file():
        mobiledeploy("quantize", str(MODEL), "--calib", str(IMAGES), "-o", str(build), "--overwrite")
    runs = ["1", "2"] + ([] if args.no_ray else ["ray"])
    order = [n for r in range(args.rounds) for n in (runs if r % 2 == 0 else runs[::-1])]
    times: dict[str, list[float]] = {n: [] for n in runs}
    rows: dict[str, list] = {}
    with ray_head() if not args.no_ray else nullcontext() as address:
        for name in order:
            where = ["--workers", "2", "--ray", address] if name == "ray" else ["--workers", name]
            seconds, run = mobiledeploy("eval", str(build), "--data", str(IMAGES), "--device", args.device,
                                        *where, "--json")
            times[name].append(seconds)
            rows.setdefault(name, json.loads(run.stdout)["rows"])
            print(f"{' '.join(where)}: {seconds:.1f} s", flush=True)
    medians = {name: statistics.median(spent) for name, spent in times.items()}
    print(f"\n{args.device}, 500 images (medians): " + ", ".join(
        f"{'Ray, 2 shards' if n == 'ray' else f'--workers {n}'} {t:.1f} s ({medians['1'] / t:.2f}x of 1 worker)"
        for n, t in medians.items()) + f"; rows identical: {all(r == rows['1'] for r in rows.values())}")


if __name__ == "__main__":
    main()
