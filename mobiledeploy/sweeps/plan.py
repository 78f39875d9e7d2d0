"""A sweep file (TOML) read into a checked plan: models x quantize settings x devices x evaluation
data. Every key is checked (unknown ones are errors, with the file and the key named), paths are
relative to the file's folder, and the number of cells is checked before anything runs.

    [[models]]                      # one or more; name defaults to the file's stem
    path = "models/a.h5"
    options = { input_size = [224, 224] }   # quantize options for this model only

    [data]
    calib = "calibration_data/"
    eval = "eval_data/"             # or a table of named sets: { imagenet = "...", street = "..." }

    [settings.default]              # optional; default: one setting, the "default" preset
    [settings.plain]
    preset = "plain"
    [settings.bias]
    refine = "bias"

    [devices]                       # optional; default: cpu = "cpu"
    cpu = "cpu"
    a53 = "arm:cortex-a53"
    pi = { device = "ssh://pi@raspberrypi.local", remote_python = "/usr/bin/python3" }

    [bench]                         # optional: latency of each build on each device
    enabled = true
    num_runs = 20
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import MobiledeployError
from ..inputs import is_regular
from ..limits import MAX_SWEEP_BYTES, MAX_SWEEP_CELLS
from ..option_checks import check_options
from ..options import BenchSettings, PRESETS, QuantizeOptions
from ..runtime import devices

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# quantize options a sweep file may not set: the user's own decisions on the command line
REFUSED = {"trust_model_code": "pass --trust-model-code to sweep instead", "overwrite": "the sweep manages its builds"}
BENCH_KEYS = {"enabled", "num_threads", "warmup_runs", "num_runs", "min_secs", "max_secs", "batch_size"}


@dataclass(frozen=True)
class Model:
    name: str
    path: Path
    options: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Setting:
    name: str
    preset: str = "default"
    options: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Device:
    name: str
    device: str
    remote_python: str | None = None


@dataclass(frozen=True)
class Plan:
    source: Path
    models: tuple[Model, ...]
    settings: tuple[Setting, ...]
    devices: tuple[Device, ...]
    calib: Path
    evals: tuple[tuple[str, Path], ...]  # (name, folder)
    bench: tuple[tuple[str, object], ...] | None  # BenchSettings fields given, None: no latency

    @property
    def cells(self) -> int:
        return len(self.models) * len(self.settings) * len(self.devices) * len(self.evals)

    def options_for(self, model: Model, setting: Setting, trust_model_code: bool = False) -> QuantizeOptions:
        """The quantize options of one (model, setting) pair: the preset, the setting's options, the
        model's own on top."""
        given = {**dict(setting.options), **dict(model.options)}  # the model's own win
        return dataclasses.replace(PRESETS[setting.preset], **given, trust_model_code=trust_model_code)


def read_plan(path: str | Path) -> Plan:
    """The checked plan in the sweep file at ``path``."""
    path = Path(path)
    if not is_regular(path):
        raise MobiledeployError(f"{path}: no such sweep file; expected a .toml file (see docs/commands/sweep.md)")
    size = path.stat().st_size
    if size > MAX_SWEEP_BYTES:
        raise MobiledeployError(f"{path}: {size} bytes; a sweep file is expected under {MAX_SWEEP_BYTES} bytes")
    try:
        document = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise MobiledeployError(f"{path}: not valid TOML ({str(exc)[:160]}); fix that line") from None
    where = _Where(path)
    where.keys(document, "the file", {"models", "data", "settings", "devices", "bench"})
    base = path.resolve().parent
    models = _models(document.get("models"), base, where)
    data = where.table(document.get("data"), "[data]", required=True)
    where.keys(data, "[data]", {"calib", "eval"})
    calib = _folder(data.get("calib"), base, where, "[data] calib")
    evals = data.get("eval")
    if isinstance(evals, str):
        evals = {"eval": evals}
    evals = where.table(evals, "[data] eval", required=True)
    settings = _settings(document.get("settings"), where)
    plan = Plan(path, models, settings, _devices(document.get("devices"), where), calib,
                tuple((where.name(k, "[data] eval"), _folder(v, base, where, f"[data] eval.{k}"))
                      for k, v in evals.items()), _bench(document.get("bench"), where))
    if not plan.evals:
        raise MobiledeployError(f"{path}: [data] eval names no folder; expected eval = \"eval_data/\"")
    if plan.cells > MAX_SWEEP_CELLS:
        raise MobiledeployError(f"{path}: {plan.cells} cells (models x settings x devices x eval sets); "
                                f"a sweep runs at most {MAX_SWEEP_CELLS}: split it")
    for model in plan.models:  # every option checked before the first build, not when its turn comes
        for setting in plan.settings:
            try:
                check_options(plan.options_for(model, setting))
            except MobiledeployError as exc:
                raise where.fail(f"[settings.{setting.name}] with model {model.name}: {exc}") from None
    return plan


class _Where:
    """Errors that name the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, message: str) -> MobiledeployError:
        return MobiledeployError(f"{self.path}: {message}")

    def table(self, value, key: str, required: bool = False) -> dict:
        if value is None and not required:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{key}: expected a table, found {_kind(value)}")
        return value

    def keys(self, table: dict, key: str, allowed: set[str]) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(f"{key}: unknown key '{unknown[0]}'; expected {', '.join(sorted(allowed))}")

    def name(self, value, key: str) -> str:
        if not isinstance(value, str) or not NAME.match(value):
            raise self.fail(f"{key}: '{value}' is not a name; expected letters, digits, '.', '_' or '-' (up to 64)")
        return value


def _models(value, base: Path, where: _Where) -> tuple[Model, ...]:
    if not isinstance(value, list) or not value:
        raise where.fail("expected at least one [[models]] table with a path")
    models = []
    for i, entry in enumerate(value):
        key = f"[[models]] #{i + 1}"
        entry = where.table(entry, key, required=True)
        where.keys(entry, key, {"path", "name", "options"})
        if not isinstance(entry.get("path"), str):
            raise where.fail(f"{key}: expected path = \"model.h5\"")
        model = (base / entry["path"])
        if not model.exists():
            raise where.fail(f"{key}: {model}: no such model file or SavedModel folder")
        name = where.name(entry.get("name", model.stem if model.is_file() else model.name), f"{key} name")
        models.append(Model(name, model, _options(entry.get("options"), f"{key} options", where)))
    _unique([m.name for m in models], "[[models]] name", where)
    return tuple(models)


def _settings(value, where: _Where) -> tuple[Setting, ...]:
    table = where.table(value, "[settings]")
    if not table:
        return (Setting("default"),)
    settings = []
    for name, options in table.items():
        key = f"[settings.{where.name(name, '[settings]')}]"
        options = dict(where.table(options, key, required=True))
        preset = options.pop("preset", "default")
        if preset not in PRESETS:
            raise where.fail(f"{key} preset: '{preset}'; expected one of {', '.join(PRESETS)}")
        settings.append(Setting(name, preset, _options(options, key, where)))
    return tuple(settings)


def _options(value, key: str, where: _Where) -> tuple[tuple[str, object], ...]:
    """Quantize options by their Python names (dashes allowed), each of the field's type."""
    fields = {f.name: f for f in dataclasses.fields(QuantizeOptions)}
    checked = []
    for name, given in where.table(value, key).items():
        field = name.replace("-", "_")
        if field in REFUSED:
            raise where.fail(f"{key}: {name} cannot be set in a sweep file; {REFUSED[field]}")
        if field not in fields:
            raise where.fail(f"{key}: unknown quantize option '{name}'; expected one of "
                             f"{', '.join(sorted(set(fields) - set(REFUSED)))}")
        default = getattr(QuantizeOptions(), field)
        if fields[field].type == "float" and default is not None:
            default = float(default)
        checked.append((field, _typed(given, default, f"{key} {name}", where)))
    return tuple(checked)


def _typed(value, default, key: str, where: _Where):
    """``value`` as the option's type, read off its default (a TOML array becomes a tuple)."""
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and (isinstance(default, bool) or default is None)
    elif isinstance(default, int) and not isinstance(default, bool):
        ok = isinstance(value, int)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        ok = isinstance(value, tuple) and all(isinstance(v, str) for v in value)
    else:  # None by default: a number, a text or a pair of sizes
        ok = isinstance(value, (int, float, str)) or (isinstance(value, tuple) and len(value) == 2
                                                      and all(isinstance(v, int) for v in value))
    if not ok:
        raise where.fail(f"{key}: {_kind(value)} '{value}' does not fit this option (its default is {default!r})")
    return value


def _devices(value, where: _Where) -> tuple[Device, ...]:
    table = where.table(value, "[devices]")
    if not table:
        return (Device("cpu", "cpu"),)
    found = []
    for name, given in table.items():
        key = f"[devices] {where.name(name, '[devices]')}"
        if isinstance(given, str):
            given = {"device": given}
        given = where.table(given, key, required=True)
        where.keys(given, key, {"device", "remote_python"})
        device, python = given.get("device"), given.get("remote_python")
        if not isinstance(device, str) or (python is not None and not isinstance(python, str)):
            raise where.fail(f"{key}: expected device = \"cpu\", \"arm:cortex-a53\" or \"ssh://user@host\"")
        try:
            devices.check(device)
        except MobiledeployError as exc:
            raise where.fail(f"{key}: {exc}") from None
        if python is not None and devices.kind(device) != "board":
            raise where.fail(f"{key}: remote_python is for ssh:// devices")
        found.append(Device(name, device, python))
    return tuple(found)


def _bench(value, where: _Where) -> tuple[tuple[str, object], ...] | None:
    table = dict(where.table(value, "[bench]"))
    where.keys(table, "[bench]", BENCH_KEYS)
    if not table.pop("enabled", True):
        return None
    for key, given in table.items():
        default = getattr(BenchSettings(), key)
        if isinstance(given, bool) or not isinstance(given, (int, float)) or given < 0 or (
                isinstance(default, int) and not isinstance(given, int)):
            raise where.fail(f"[bench] {key}: '{given}' is not a {'whole ' if isinstance(default, int) else ''}"
                             "number of at least 0")
    return tuple(sorted(table.items()))


def _folder(value, base: Path, where: _Where, key: str) -> Path:
    if not isinstance(value, str):
        raise where.fail(f"{key}: expected a folder, e.g. \"calibration_data/\"")
    folder = base / value
    if not folder.exists():
        raise where.fail(f"{key}: {folder}: no such folder")
    return folder


def _unique(names: list[str], key: str, where: _Where) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise where.fail(f"{key}: '{name}' appears twice; give each a name of its own")
        seen.add(name)


def _kind(value) -> str:
    return {dict: "a table", list: "an array", tuple: "an array", str: "a text", bool: "true/false",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)
