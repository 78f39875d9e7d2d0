"""The refinement alone: seconds and peak memory per weighted layer, this checkout beside another.

    python benchmarks/refine_layers.py [--model shared|v1_100 ...] [--work /tmp/md-refine] [--repeat N]
                                       [--against CHECKOUT]

A default build of each model (the shared ImageNet MobileNet v1 0.25-224; keras.applications'
MobileNet v1 1.0-224 as ``quantize_stages.py`` makes it) runs up to its refinement once, and
saves what ``refine_for_int8`` is given: the prepared model, the calibration samples and the
settings (``--work``, reused while they are there). Each run then refines that, in a fresh process,
and reports when each weighted layer was done and the process's resident memory at its highest
while the layer ran (sampled every 5 ms: a peak shorter than that may be missed). Prints, per
layer, the mean seconds of each checkout and the peak memory, the totals, and whether the
refined weights of every run equal the first run's (a change meant to leave the files alone must
leave them equal). About 40 s a run on the 1.0-224 model, and half a minute more to save its inputs.

--against CHECKOUT refines the same inputs with another checkout's mobiledeploy (a git worktree of
an earlier commit), alternately first and second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from quantize_stages import IMAGES, ROOT, checkouts, model_path, side_by_side_arguments

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

# in the build's process: save refine_for_int8's inputs, then stop the build
CAPTURE = """
import json, sys, numpy as np
from pathlib import Path
import mobiledeploy.passes.refine as refine
out = Path(sys.argv[2])
SETTINGS = ("adaptive_rounding", "rounding_samples", "positions_per_weight", "clip_activations", "per_channel",
            "activation_bits")
def capture(model, calib, **options):
    model.save(out / "prepared.keras")
    np.save(out / "samples.npy", np.asarray(calib, np.float32))
    settings = {k: options[k] for k in SETTINGS if k in options}
    settings["ranges"] = {name: list(map(float, r)) for name, r in (options.get("ranges") or {}).items()}
    (out / "settings.json").write_text(json.dumps(settings))
    raise SystemExit(0)
refine.refine_for_int8 = capture
from mobiledeploy.cli.main import main
sys.argv = ["mobiledeploy", "quantize", sys.argv[1], "--calib", sys.argv[3], "-o", str(out / "build"), "--overwrite",
            "--num-calib", "200"]
main()
"""

# in a fresh process: refine the saved inputs, print each weighted layer's time and peak memory as JSON
REFINE = """
import json, sys, threading, time, numpy as np, keras
from pathlib import Path
from mobiledeploy.model.graph import WEIGHTED, layer_graph
from mobiledeploy.passes.refine import refine_for_int8
work = Path(sys.argv[1])
model = keras.models.load_model(work / "prepared.keras", compile=False, safe_mode=True)
samples = np.load(work / "samples.npy")
settings = json.loads((work / "settings.json").read_text())
settings["ranges"] = {name: tuple(r) for name, r in settings["ranges"].items()}
done, peaks = [time.perf_counter()], {}
def sample():
    while True:
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * 4096
        peaks[len(done)] = max(peaks.get(len(done), 0), rss)
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
refined, _ = refine_for_int8(model, samples, progress=lambda *_: done.append(time.perf_counter()), **settings)
names = [name for name, node in layer_graph(model).items() if node["kind"] in WEIGHTED]
np.savez(work / sys.argv[2], *refined.get_weights())
print(json.dumps({"layers": [[name, b - a, peaks.get(i + 1, 0)] for i, (name, a, b) in
                             enumerate(zip(names, done, done[1:]))], "seconds": done[-1] - done[0]}))
"""


def _last_line(text: str) -> str:
    """What a failed subprocess said last (its error), or that it said nothing."""
    return (text.strip().splitlines() or ["no message"])[-1]


def inputs(name: str, work: Path) -> Path:
    folder = work / name
    if not (folder / "settings.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        run = subprocess.run([sys.executable, "-c", CAPTURE, str(model_path(name, work)), str(folder), str(IMAGES)],
                             cwd=ROOT, env={**ENV, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
        if run.returncode or not (folder / "settings.json").is_file():
            sys.exit(f"the default build of {name} stopped before its refinement: "
                     f"{_last_line(run.stderr)}")
    return folder


def refine(folder: Path, code: Path, weights: str) -> dict:
    run = subprocess.run([sys.executable, "-c", REFINE, str(folder), weights], capture_output=True, text=True,
                         cwd=code, env={**ENV, "PYTHONPATH": str(code)})
    if run.returncode:
        sys.exit(f"refine with {code} failed: {_last_line(run.stderr)}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    import numpy as np

    parser = side_by_side_arguments(__doc__.splitlines()[0], "/tmp/md-refine")
    args = parser.parse_args()
    codes = checkouts(parser, args)
    for name in args.model or ("v1_100",):
        folder = inputs(name, args.work)
        runs: dict[str, list[dict]] = {code: [] for code in codes}
        files = []
        for repeat in range(args.repeat):
            for code in list(codes) if repeat % 2 == 0 else list(codes)[::-1]:  # who goes first alternates
                files.append(f"weights-{code}-{repeat}.npz")
                runs[code].append(refine(folder, codes[code], files[-1]))
        first = np.load(folder / files[0])
        same = all(all(np.array_equal(first[k], np.load(folder / f)[k]) for k in first.files) for f in files[1:])
        print(f"\n{name}: refine_for_int8 alone, mean of {args.repeat} run(s); seconds until each weighted layer "
              "was done, and the highest resident memory while it ran\n")
        print("| layer | " + " | ".join(f"{code} s | {code} peak GB" for code in codes) + " |")
        print("|---" * (2 * len(codes) + 1) + "|")
        for i, (layer, _, _) in enumerate(runs["this"][0]["layers"]):
            cells = [f"{np.mean([r['layers'][i][1] for r in runs[c]]):.2f} | "
                     f"{max(r['layers'][i][2] for r in runs[c]) / 1e9:.2f}" for c in codes]
            print(f"| {layer} | " + " | ".join(cells) + " |")
        cells = [f"**{np.mean([r['seconds'] for r in runs[c]]):.2f}** | "
                 f"**{max(x[2] for r in runs[c] for x in r['layers']) / 1e9:.2f}**" for c in codes]
        print("| all | " + " | ".join(cells) + " |")
        for code in codes:
            print(f"{code}: " + ", ".join(f"{r['seconds']:.2f}" for r in runs[code]) + " s")
        print("refined weights of every run equal: " + ("yes" if same else "NO"), flush=True)


if __name__ == "__main__":
    main()
