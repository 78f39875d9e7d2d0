"""TFLite metadata: what an app needs to run a .tflite file without glue code, embedded in it as
TFLite's metadata tools write it (the "TFLITE_METADATA" buffer, a ModelMetadata flatbuffer with
file identifier "M001", and the associated files zipped after the model, so that the file is also
a zip archive): the input's normalization (mean and std per channel: (pixel - mean) / std is the
model's input) and image properties, and the labels of the output's classes.

The metadata library (tflite-support) pins protobuf < 4, which TensorFlow 2.21 cannot use, so the
tables are written with the flatbuffers package, field by field in the order of the published
schema (tensorflow/tflite-support, tensorflow_lite_support/metadata/metadata_schema.fbs, v1.5);
``read`` parses them back the same way.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

METADATA_NAME = "TFLITE_METADATA"
IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
MIN_PARSER_VERSION = "1.0.0"  # normalization, image properties and axis labels: the first version's features
# enum and union values of the schema
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
RGB, GRAYSCALE = 1, 2  # ColorSpaceType
FEATURE_PROPERTIES, IMAGE_PROPERTIES = 1, 2  # ContentProperties
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions
# what each pixel scaling is as (pixel - mean) / std
NORMALIZATION = {"mobilenet": (127.5, 127.5), "unit": (0.0, 255.0), "raw": (0.0, 1.0)}


@dataclass(frozen=True)
class Metadata:
    """What ``embed`` writes and ``read`` finds."""

    name: str
    description: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color_space: int  # RGB or GRAYSCALE
    height: int
    width: int
    labels: tuple[str, ...] = ()


def embed(path: Path, metadata: Metadata) -> None:
    """Rewrite the .tflite file at ``path`` with ``metadata`` (replacing any it had) and, with labels,
    the labels file zipped after the model."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(_model_bytes(path.read_bytes())))
    entries = [m for m in (model.metadata or []) if m.name.decode() != METADATA_NAME]
    buffer = schema.BufferT()
    buffer.data = list(_model_metadata(metadata))
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [*entries, entry]
    content = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    if metadata.labels:  # a zip archive appended after the model: the whole file reads as both
        result = io.BytesIO(content)
        with zipfile.ZipFile(result, "a", zipfile.ZIP_STORED) as files:
            # a fixed date: the same inputs give the same bytes
            files.writestr(zipfile.ZipInfo(LABELS_FILE, date_time=(1980, 1, 1, 0, 0, 0)),
                           "".join(f"{label}\n" for label in metadata.labels))
        content = result.getvalue()
    path.write_bytes(content)


def embed_in_build(work: Path, artifacts: list, model_name: str, preprocessing, labels: tuple[str, ...]) -> list:
    """Every .tflite artifact in ``work`` with its metadata embedded (``Artifact.details`` say so)."""
    from dataclasses import replace

    mean, std = NORMALIZATION[preprocessing.scaling]
    result = []
    for artifact in artifacts:
        if artifact.format == "tflite":
            embed(work / artifact.file, Metadata(
                name=model_name, description=f"{model_name}: image classification, {artifact.precision} "
                                             "(made by mobiledeploy)",
                mean=(mean,) * preprocessing.channels, std=(std,) * preprocessing.channels,
                color_space=RGB if preprocessing.channels == 3 else GRAYSCALE, height=preprocessing.height,
                width=preprocessing.width, labels=labels))
            artifact = replace(artifact, details={**artifact.details, "metadata": {
                "normalization": {"mean": mean, "std": std}, "labels": len(labels)}})
        result.append(artifact)
    return result


def read(path: Path) -> Metadata | None:
    """The metadata ``embed`` wrote (None when the file has none), the labels from its zip."""
    from flatbuffers.table import Table
    from tensorflow.lite.python import schema_py_generated as schema

    content = path.read_bytes()
    model = schema.Model.GetRootAsModel(content, 0)
    data = None
    for i in range(model.MetadataLength()):
        if model.Metadata(i).Name().decode() == METADATA_NAME:
            data = model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
    if data is None:
        return None
    if data[4:8] != IDENTIFIER:
        raise ValueError(f"{path}: TFLITE_METADATA is not a ModelMetadata buffer (identifier {data[4:8]!r})")
    root = Table(bytearray(data), int.from_bytes(data[:4], "little"))
    graph = _tables(root, 3)[0]  # subgraph_metadata
    source = _tables(graph, 2)[0]  # input_tensor_metadata
    content_table = _table_at(source, 3)
    image = _table_at(content_table, 1)
    size = _table_at(image, 1)
    normalization = _table_at(_tables(source, 4)[0], 1)
    labels: tuple[str, ...] = ()
    if zipfile.is_zipfile(io.BytesIO(content)):
        with zipfile.ZipFile(io.BytesIO(content)) as files:
            if LABELS_FILE in files.namelist():
                labels = tuple(files.read(LABELS_FILE).decode("utf-8").splitlines())
    return Metadata(
        name=_string(root, 0), description=_string(root, 1),
        mean=tuple(_floats(normalization, 0)), std=tuple(_floats(normalization, 1)),
        color_space=_scalar(image, 0, "Int8Flags"), height=_scalar(size, 1, "Uint32Flags"),
        width=_scalar(size, 0, "Uint32Flags"), labels=labels)


def _model_bytes(content: bytes) -> bytes:
    """The flatbuffer alone, without a zip of associated files written after it earlier (the
    model's buffers all lie inside it, so the zip's first local header marks its end)."""
    if not zipfile.is_zipfile(io.BytesIO(content)):
        return content
    with zipfile.ZipFile(io.BytesIO(content)) as files:
        start = min((info.header_offset for info in files.infolist()), default=len(content))
    return content[:start]


def _model_metadata(m: Metadata) -> bytes:
    """A ModelMetadata flatbuffer: one subgraph, its input (image, normalization) and output
    (class scores, with the labels file when there are labels)."""
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def string(text: str) -> int:
        return b.CreateString(text)

    def vector(offsets: list[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    def floats(values) -> int:
        b.StartVector(4, len(values), 4)
        for value in reversed(values):
            b.PrependFloat32(float(value))
        return b.EndVector()

    def table(fields: list[tuple[int, str, object]]) -> int:
        """A table from (slot, kind, value): 'offset' for strings, vectors and tables."""
        b.StartObject(max(slot for slot, _, _ in fields) + 1 if fields else 0)
        for slot, kind, value in fields:
            if kind == "offset":
                b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "int8":
                b.PrependInt8Slot(slot, value, 0)
            elif kind == "uint8":
                b.PrependUint8Slot(slot, value, 0)
            elif kind == "uint32":
                b.PrependUint32Slot(slot, value, 0)
        return b.EndObject()

    normalization = table([(0, "offset", floats(m.mean)), (1, "offset", floats(m.std))])
    process_unit = table([(0, "uint8", NORMALIZATION_OPTIONS), (1, "offset", normalization)])
    size = table([(0, "uint32", m.width), (1, "uint32", m.height)])
    image = table([(0, "int8", m.color_space), (1, "offset", size)])
    input_content = table([(0, "uint8", IMAGE_PROPERTIES), (1, "offset", image)])
    lows = [(0 - mean) / std for mean, std in zip(m.mean, m.std)]
    highs = [(255 - mean) / std for mean, std in zip(m.mean, m.std)]
    input_stats = table([(0, "offset", floats(highs)), (1, "offset", floats(lows))])
    source = table([(0, "offset", string("image")),
                    (1, "offset", string("The image to classify, as (pixel - mean) / std per channel.")),
                    (3, "offset", input_content), (4, "offset", vector([process_unit])),
                    (5, "offset", input_stats)])
    output_fields = [(0, "offset", string("scores")),
                     (1, "offset", string("One score per class, in the order of the labels file.")),
                     (3, "offset", table([(0, "uint8", FEATURE_PROPERTIES), (1, "offset", table([]))]))]
    if m.labels:
        labels = table([(0, "offset", string(LABELS_FILE)),
                        (1, "offset", string("The class of each score, one per line.")),
                        (2, "int8", TENSOR_AXIS_LABELS)])
        output_fields.append((6, "offset", vector([labels])))
    target = table(output_fields)
    graph = table([(2, "offset", vector([source])), (3, "offset", vector([target]))])
    root = table([(0, "offset", string(m.name)), (1, "offset", string(m.description)),
                  (3, "offset", vector([graph])), (7, "offset", string(MIN_PARSER_VERSION))])
    b.Finish(root, file_identifier=IDENTIFIER)
    return bytes(b.Output())


def _field(table, slot: int) -> int:
    return table.Offset(4 + 2 * slot)


def _table_at(table, slot: int):
    from flatbuffers.table import Table

    offset = _field(table, slot)
    if not offset:
        raise ValueError(f"metadata table field {slot} is missing")
    return Table(table.Bytes, table.Indirect(offset + table.Pos))


def _tables(table, slot: int) -> list:
    from flatbuffers.table import Table

    offset = _field(table, slot)
    if not offset:
        raise ValueError(f"metadata vector field {slot} is missing")
    start, length = table.Vector(offset), table.VectorLen(offset)
    return [Table(table.Bytes, table.Indirect(start + 4 * i)) for i in range(length)]


def _string(table, slot: int) -> str:
    offset = _field(table, slot)
    return table.String(offset + table.Pos).decode("utf-8") if offset else ""


def _floats(table, slot: int) -> list[float]:
    import flatbuffers.number_types as types

    offset = _field(table, slot)
    if not offset:
        return []
    start, length = table.Vector(offset), table.VectorLen(offset)
    return [table.Get(types.Float32Flags, start + 4 * i) for i in range(length)]


def _scalar(table, slot: int, kind: str) -> int:
    import flatbuffers.number_types as types

    offset = _field(table, slot)
    return table.Get(getattr(types, kind), offset + table.Pos) if offset else 0
