"""Load a model file as a user has it: any Keras 2 or Keras 3 era, whatever its compiled state holds.

The file is recognised by its content, not its name: HDF5 (`model.save('m.h5')`, and tf.keras 2's
`model.save('m.keras')` that wrote HDF5 under that name) or a `.keras` zip (Keras 2.13-2.15 and
Keras 3). The architecture and weights load with `compile=False`: an optimizer, loss or metric
config Keras 3 cannot read never stops a build. The loss alone is rebuilt from the file's
training config when Keras 3 can read it; otherwise `LossSpec.note` says why it is not computed.

Configs written by Keras 2 are repaired (repair.py) in a temporary copy of the file; the user's
file is never touched, and every repair applied is reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from reportgen.errors import UserError
from reportgen.model.repair import LOSS_ALIASES, AppliedRepair, repair_model_config
from reportgen.model.tf import keras

log = logging.getLogger("reportgen")


@dataclass
class LossSpec:
    """The loss of the model as compiled, ready to evaluate, or why it is not computed."""

    fn: object = None  # a Keras loss (callable y_true, y_pred), or None
    name: str | None = None
    from_logits: bool | None = None
    note: str = ""  # "" when fn is usable; otherwise the reason, shown as "loss not computed: <note>"
    per_output: dict | None = field(default=None, repr=False)  # output name or index -> LossSpec

    def for_output(self, name: str, index: int, count: int) -> "LossSpec":
        """The loss of one output of a model with `count` outputs."""
        if self.per_output is None:
            if count > 1 and self.fn is not None:
                return replace(self, per_output=None)  # one loss for every output: Keras applies it to each
            return self
        for key in (name, index, str(index)):
            if key in self.per_output:
                return self.per_output[key]
        return LossSpec(note=f"the model's losses are given per output and none is for '{name}'")


@dataclass
class LoadedModel:
    model: keras.Model
    path: Path
    file_format: str  # e.g. "HDF5, written by Keras 2.12.0 (tensorflow)"
    keras_version: str | None
    repairs: list[AppliedRepair]
    loss: LossSpec


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if zipfile.is_zipfile(path):
        return "zip"
    return "other"


def load_model(path: Path | str, unsafe: bool = False) -> LoadedModel:
    """Load a model file. Raises UserError with a one-line reason."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            raise UserError(
                f"{path}: is a TensorFlow SavedModel folder, which Keras 3 cannot open layer by layer; "
                "load it in the TensorFlow version that wrote it and save it with model.save('model.keras'), then pass that file"
            )
        raise UserError(f"{path}: is a folder, not a model file (.keras or .h5)")
    try:
        kind = _sniff(path)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if kind == "hdf5":
        return _load_hdf5(path, unsafe)
    if kind == "zip":
        return _load_zip(path, unsafe)
    raise UserError(f"{path}: is not a Keras model file (expected a .keras zip or an HDF5 .h5 file)")


def _text(value) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _load_hdf5(path: Path, unsafe: bool) -> LoadedModel:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            attrs = {key: _text(f.attrs.get(key)) for key in ("keras_version", "backend", "model_config", "training_config")}
    except Exception as exc:
        raise UserError(f"{path}: cannot load the model (HDF5 file, unreadable or truncated): {_short(exc)}") from None
    if attrs["model_config"] is None:
        raise UserError(
            f"{path}: holds weights only (model.save_weights), not a model; save the whole model with model.save(...) and pass that file"
        )
    try:
        config = json.loads(attrs["model_config"])
    except ValueError as exc:
        raise UserError(f"{path}: its model_config is not valid JSON ({_short(exc)})") from None
    version = attrs["keras_version"]
    fixed, repairs = repair_model_config(config)
    fmt = f"HDF5, written by Keras {version or '(version not recorded)'}" + (f" ({attrs['backend']})" if attrs["backend"] else "")
    if path.suffix.lower() not in (".h5", ".hdf5"):
        fmt += f", named {path.suffix or 'without an extension'}"
    training = _json_or_none(attrs["training_config"])
    with _loadable_copy(path, ".h5", lambda copy: _write_h5_config(copy, fixed) if repairs else None,
                        needed=bool(repairs) or path.suffix.lower() not in (".h5", ".hdf5")) as loadable:
        model = _keras_load(loadable, path, unsafe, "HDF5")
    loss = loss_from_config(training.get("loss") if isinstance(training, dict) else None, training is not None)
    return LoadedModel(model, path, fmt, version, repairs, loss)


def _load_zip(path: Path, unsafe: bool) -> LoadedModel:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names:
                raise UserError(f"{path}: is a zip file but not a Keras model (.keras files hold config.json)")
            config = json.loads(zf.read("config.json"))
            metadata = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
    except UserError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UserError(f"{path}: cannot load the model (.keras zip, unreadable or truncated): {_short(exc)}") from None
    version = metadata.get("keras_version")
    fixed, repairs = repair_model_config(config)
    fmt = f".keras zip, written by Keras {version or '(version not recorded)'}"
    if path.suffix.lower() != ".keras":
        fmt += f", named {path.suffix or 'without an extension'}"
    with _loadable_copy(path, ".keras", lambda copy: _write_zip_config(path, copy, fixed) if repairs else None,
                        needed=bool(repairs) or path.suffix.lower() != ".keras") as loadable:
        model = _keras_load(loadable, path, unsafe, ".keras")
    compile_config = config.get("compile_config") if isinstance(config, dict) else None
    loss = loss_from_config(compile_config.get("loss") if isinstance(compile_config, dict) else None, compile_config is not None)
    return LoadedModel(model, path, fmt, version, repairs, loss)


def _json_or_none(text: str | None):
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


@contextlib.contextmanager
def _loadable_copy(path: Path, suffix: str, write, needed: bool):
    """The path Keras should load: the file itself, or a temporary copy with the right extension
    (and the repaired config, written by `write(copy)`). The copy is removed afterwards."""
    if not needed:
        yield path
        return
    folder = Path(tempfile.mkdtemp(prefix="reportgen-model-"))
    try:
        copy = folder / (path.stem + suffix)
        shutil.copyfile(path, copy)
        write(copy)
        yield copy
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_h5_config(copy: Path, config: dict) -> None:
    import h5py

    with h5py.File(copy, "r+") as f:
        f.attrs["model_config"] = json.dumps(config).encode("utf-8")


def _write_zip_config(source: Path, copy: Path, config: dict) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(copy, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = json.dumps(config).encode("utf-8") if item.filename == "config.json" else src.read(item.filename)
            dst.writestr(item, data)


def _is_safety_refusal(exc: BaseException) -> bool:
    return "safe_mode" in str(exc)


def _short(exc: BaseException, limit: int = 300) -> str:
    message = " ".join(str(exc).split()) or type(exc).__name__
    return message if len(message) <= limit else message[:limit] + "..."


def _keras_load(loadable: Path, shown: Path, unsafe: bool, kind: str) -> keras.Model:
    # Keras logs through absl about state it could not restore; we never train, so hush it.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = keras.models.load_model(loadable, compile=False, safe_mode=not unsafe)
    except UserError:
        raise
    except Exception as exc:
        if _is_safety_refusal(exc):
            raise UserError(
                f"{shown}: the model holds Python code (a Lambda layer) that would run when it loads, and Keras's safe mode refuses it; "
                "pass --unsafe only if you trust this file"
            ) from None
        raise UserError(f"{shown}: cannot load the model ({kind} file): {_short(exc)}") from None
    finally:
        absl.setLevel(level)
    if not isinstance(model, keras.Model):
        raise UserError(f"{shown}: holds a {type(model).__name__}, not a Keras model")
    return model


# -- the loss -------------------------------------------------------------------------------------

_REDUCTIONS = {"auto": "sum_over_batch_size", "sum_over_batch_size": "sum_over_batch_size", "sum": "sum", "none": "none",
               "mean": "mean", "mean_with_sample_weight": "mean_with_sample_weight"}


def _is_single_loss(cfg) -> bool:
    return isinstance(cfg, str) or (isinstance(cfg, dict) and "class_name" in cfg)


def _loss_label(cfg) -> str:
    if isinstance(cfg, str):
        return cfg
    inner = cfg.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("name"), str):
        return inner["name"]
    if isinstance(inner, str):
        return inner
    return str(cfg.get("class_name"))


def _repaired_loss_config(cfg: dict) -> dict:
    """Keras 2 loss objects: `reduction: "auto"` (Keras 3: "sum_over_batch_size") and the `fn` they carry."""
    cfg = json.loads(json.dumps(cfg))
    inner = cfg.get("config")
    if isinstance(inner, dict):
        if "reduction" in inner:
            inner["reduction"] = _REDUCTIONS.get(str(inner["reduction"]), inner["reduction"])
        inner.pop("fn", None)
    return cfg


def loss_from_config(cfg, compiled: bool = True) -> LossSpec:
    """The loss from a saved training/compile config: a name, a serialized loss, or per-output dict/list."""
    if cfg is None:
        note = "the model was saved without a loss (not compiled)" if not compiled else "the model file holds no loss"
        return LossSpec(note=note)
    if isinstance(cfg, list) and not _is_single_loss(cfg):
        parts = [loss_from_config(c) for c in cfg]
        return LossSpec(note="the model has one loss per output", per_output={i: p for i, p in enumerate(parts)})
    if isinstance(cfg, dict) and not _is_single_loss(cfg):
        return LossSpec(note="the model has one loss per output", per_output={str(k): loss_from_config(v) for k, v in cfg.items()})
    label = _loss_label(cfg)
    try:
        if isinstance(cfg, str):
            fn = keras.losses.get(LOSS_ALIASES.get(cfg, cfg))
        else:
            fn = keras.losses.deserialize(_repaired_loss_config(cfg))
    except Exception as exc:
        return LossSpec(name=label, note=f"Keras 3 cannot rebuild the loss '{label}' from the file ({_short(exc, 160)})")
    if fn is None or isinstance(fn, str) or not callable(fn):
        return LossSpec(name=label, note=f"Keras 3 does not know the loss '{label}' (a custom loss?)")
    return LossSpec(fn=fn, name=label, from_logits=_from_logits(fn))


def _from_logits(fn) -> bool | None:
    try:
        value = fn.get_config().get("from_logits") if hasattr(fn, "get_config") else None
    except Exception:
        value = None
    return bool(value) if value is not None else False


def loss_of_compiled(model: keras.Model) -> LossSpec:
    """The loss of a model compiled in this process (a model object handed over directly)."""
    loss = getattr(model, "loss", None)
    if loss is None:
        return LossSpec(note="the model is not compiled with a loss")
    if isinstance(loss, (list, tuple)):
        return LossSpec(note="the model has one loss per output", per_output={i: _compiled_single(x) for i, x in enumerate(loss)})
    if isinstance(loss, dict):
        return LossSpec(note="the model has one loss per output", per_output={str(k): _compiled_single(v) for k, v in loss.items()})
    return _compiled_single(loss)


def _compiled_single(loss) -> LossSpec:
    if isinstance(loss, str):
        return loss_from_config(loss)
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__
    return LossSpec(fn=loss, name=name, from_logits=_from_logits(loss))
