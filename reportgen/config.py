"""--config files: every build option in TOML (keys as the options' names, `top_k = 8` or `top-k = 8`),
or a report.json's `config`, which records the options a site was built with. Flags on the command
line win over the file. Paths in a config are relative to the working folder, as on the command line.

Also how local paths are published: relative to the working folder when inside it, else the base name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from reportgen.errors import UserError

# Options that hold paths (converted to Path); lists of paths
_PATHS = {"model", "data", "out", "class_names"}
_PATH_LISTS = {"images"}


def _fields() -> dict:
    from dataclasses import fields

    from reportgen.build import BuildOptions

    return {f.name: f for f in fields(BuildOptions)}


def read_config(path: Path) -> dict:
    """The options in a TOML config or a report.json, as BuildOptions field values. Raises UserError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise UserError(f"--config {path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
            raise UserError(f"--config {path}: a JSON config is a reportgen report.json with a \"config\" object")
        data = data["config"]
    else:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise UserError(f"--config {path}: not valid TOML ({exc})") from None
        data = data.get("build", data)  # a [build] table, or keys at the top
    return config_options(data, f"--config {path}")


def config_options(data: dict, where: str) -> dict:
    """A config's keys and values as BuildOptions field values. Raises UserError on an unknown key."""
    known = _fields()
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known or name in ("model_label", "data_label", "config"):
            raise UserError(f"{where}: unknown option {key!r} (the options are those of 'reportgen build --help')")
        if name in ("shard", "partial_out", "partials"):
            raise UserError(f"{where}: {key!r} belongs on the command line of each shard's run, not in a config")
        if name in _PATHS and value is not None:
            value = Path(value)
        elif name in _PATH_LISTS:
            value = [Path(v) for v in value]
        elif name == "input_size" and value is not None:
            value = tuple(int(v) for v in value)
        out[name] = value
    return out


def config_value(value, show_paths: bool):
    """An option's value as a config file holds it (paths as published)."""
    if isinstance(value, Path):
        return str(value) if show_paths else published_path(value)
    if isinstance(value, (list, tuple)):
        return [config_value(v, show_paths) for v in value]
    return value


def published_path(path) -> str:
    path = Path(path)
    try:
        return Path(os.path.relpath(path.absolute(), Path.cwd())).as_posix() if path.absolute().is_relative_to(Path.cwd()) else path.name
    except ValueError:  # another drive
        return path.name
