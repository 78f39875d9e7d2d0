"""Exporters: one module per format, the same signature.

``export(model, representative, directory, settings) -> list[Artifact]`` where
``representative()`` yields preprocessed float32 calibration batches. Both exporters get the
same calibration batches, so their int8 files are comparable.
"""
