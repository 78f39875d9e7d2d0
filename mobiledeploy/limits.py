"""Budgets checked before anything is allocated: every input is hostile until checked.

A small file can declare a huge thing (a 3 MB archive whose config inflates to 2 GiB, an HDF5
dataset that declares 3 GiB and stores nothing, a 469-byte PNG of 1 x 400,000 pixels that the
crop would upscale to 14 M pixels per row). Each reader compares what an input declares with
these limits first, and refuses with one line when it is over. They are far above any MobileNet
(a 1.0-224 has 4.2 M parameters and 2.4 M activations in its largest tensor per image).
"""

from __future__ import annotations

MAX_JSON_BYTES = 64 << 20  # a model config, a manifest, a baseline: real ones are under 5 MB
MAX_JSON_DEPTH = 64  # nesting of JSON objects and lists: real Keras configs reach about 20
MAX_WEIGHT_BYTES = 2 << 30  # all weights of a model as declared by the file (EfficientNet-B7: 0.26 GB)
MAX_STORED_RATIO = 64  # a weight may declare at most this many times the bytes it stores (+ 1 MiB)
MAX_HDF5_OBJECTS = 200_000  # groups and datasets in a model's HDF5 file
# parameters a model config may declare, checked before Keras builds it: MobileNets have 0.5 to 7 M,
# EfficientNet-B7 66 M; a Conv2D with 4,000,000 filters on an RGB input declares 108 M (432 MB)
MAX_PARAMETERS = 100_000_000
MAX_ACTIVATION_ELEMENTS = 64_000_000  # elements of one layer output for one image, checked likewise
MAX_IMAGE_PIXELS = 64_000_000  # pixels of a decoded image, and of the image after resizing for the crop
MAX_IMAGE_BYTES = 128 << 20  # an image file, read into memory before it is decoded
MAX_ARRAY_BYTES_PER_SAMPLE = 64 << 20  # one sample of a .npy/.npz array
MAX_WORKERS = 256  # worker processes eval and check start at once (--workers)
MAX_DECODED_BYTES = 1 << 30  # decoded calibration images a build keeps to read again (more: decoded each time)
# activations the search keeps to resume refinements, both sides (passes/checkpoints.py); a quarter more
# in ONNX tensors to resume its calibrations (export/onnx_calibration.py)
MAX_CHECKPOINT_BYTES = 1 << 30
MAX_SWEEP_BYTES = 1 << 20  # a sweep file (TOML): real ones are a few hundred bytes
MAX_SWEEP_CELLS = 10_000  # models x settings x devices x evaluation sets in one sweep
