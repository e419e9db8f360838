"""How the model wants its input: the preprocessing mode, the resize method, and what the model does itself.

Modes are those of `keras.applications.imagenet_utils.preprocess_input`, with exactly its
formulas (float32 arithmetic, in this order), plus the `flow_from_directory` rescale:

    rescale   x * scale                      (default scale 1/255, as flow_from_directory(rescale=1/255))
    none      x                              (raw 0..255: the model preprocesses its input itself)
    tf        x / 127.5 - 1                  ([-1, 1])
    torch     (x / 255 - mean) / std         (ImageNet mean and std, RGB)
    caffe     x[..., ::-1] - mean            (RGB to BGR, ImageNet mean in BGR order, no scaling)

`auto` (the default) picks `none` when the model starts with its own Rescaling or Normalization
(possibly behind augmentation layers, which do nothing at inference), otherwise `rescale` 1/255.
When a keras.applications base is recognised inside the model and no mode was given, a warning
names the mode that base expects: reportgen never guesses silently.

Resizing: `nearest` is Pillow's nearest neighbour, as `flow_from_directory` (via
`keras.utils.load_img`) does it; every other method is `tf.image.resize(image, size, method,
antialias=False)` on the decoded image, as `keras.utils.image_dataset_from_directory` does it,
which gives float32 pixels (not rounded to 8 bits).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from reportgen.errors import UserError

MODES = ("auto", "rescale", "none", "tf", "torch", "caffe")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos3", "lanczos5", "gaussian", "mitchellcubic")
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # torch mode, on x / 255
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)  # caffe mode, on 0..255, after RGB -> BGR

# Layers that do nothing at inference (augmentation) and may sit in front of the model's own preprocessing.
_INACTIVE_AT_INFERENCE = {
    "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast", "RandomBrightness",
    "RandomCrop", "RandomHeight", "RandomWidth", "RandomGrayscale", "RandomHue", "RandomSaturation",
    "RandomSharpness", "RandomShear", "RandomColorJitter", "RandomColorDegeneration", "RandomPosterization",
    "RandomInvert", "RandomErasing", "RandomGaussianBlur", "RandomPerspective", "RandomElasticTransform",
    "AugMix", "RandAugment", "CutMix", "MixUp", "Solarization", "GaussianNoise", "GaussianDropout",
    "Dropout", "SpatialDropout2D", "AlphaDropout", "InputLayer",
}
_IN_MODEL = {"Rescaling", "Normalization"}  # (a tf.keras 2 TFOpLambda x / c, x - c is read as Rescaling: repair.py)

# keras.applications bases by model name (Keras 2 and 3 spellings) -> (family, mode its preprocess_input uses).
# "in-model": the base holds its own preprocessing layers (Rescaling/Normalization) and takes raw 0..255.
APPLICATION_BASES: list[tuple[str, str, str]] = [
    (r"vgg(16|19)", "VGG", "caffe"),
    (r"resnet(50|101|152)", "ResNet (v1)", "caffe"),
    (r"resnet(50|101|152)v2", "ResNetV2", "tf"),
    (r"inception_v3", "InceptionV3", "tf"),
    (r"inception_resnet_v2", "InceptionResNetV2", "tf"),
    (r"xception", "Xception", "tf"),
    (r"mobilenet_[0-9.]+_[0-9]+", "MobileNet", "tf"),
    (r"mobilenetv2_[0-9.]+_[0-9]+", "MobileNetV2", "tf"),
    (r"mobilenetv3(small|large)", "MobileNetV3", "in-model"),
    (r"densenet(121|169|201)", "DenseNet", "torch"),
    (r"nasnet(_mobile|_large)?", "NASNet", "tf"),
    (r"efficientnetb[0-7]", "EfficientNet", "in-model"),
    (r"efficientnetv2-(b[0-3]|s|m|l)", "EfficientNetV2", "in-model"),
    (r"convnext_(tiny|small|base|large|xlarge)", "ConvNeXt", "in-model"),
    (r"regnet[xy]\d+", "RegNet", "in-model"),
    (r"resnet-rs-\d+", "ResNetRS", "in-model"),
]


@dataclass(frozen=True)
class Preprocessing:
    """What reportgen feeds the model: x' = (channel_order(x) * scale + offset - mean) / std, per channel."""

    mode: str  # rescale | none | tf | torch | caffe
    scale: float = 1.0
    offset: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str = "RGB"  # "BGR" for caffe
    interpolation: str = "nearest"
    in_model: str | None = None  # the model's own preprocessing layer, when it has one
    chosen_by: str = "option"  # "option" (--preprocess / --rescale) or "auto"

    def as_dict(self) -> dict:
        data = asdict(self)
        data["mean"] = list(self.mean) if self.mean else None
        data["std"] = list(self.std) if self.std else None
        return data

    def describe(self) -> str:
        text = {
            "rescale": f"pixels × {_fraction(self.scale)}",
            "none": "raw pixels 0…255",
            "tf": "x / 127.5 − 1 (range −1…1, keras.applications “tf” mode)",
            "torch": "x / 255, then ImageNet mean and std per channel (keras.applications “torch” mode)",
            "caffe": "RGB → BGR, ImageNet mean subtracted (keras.applications “caffe” mode)",
        }[self.mode]
        return text

    def apply(self, x):
        """The formula on a float32 tensor [batch, h, w, c] (TensorFlow ops; numpy arrays work too via numpy_apply)."""
        from reportgen.model.tf import tf

        if self.mode == "rescale":
            return x * self.scale
        if self.mode == "none":
            return x
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            return (x / 255.0 - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)
        return x[..., ::-1] - tf.constant(self.mean, tf.float32)

    def numpy_apply(self, x: np.ndarray) -> np.ndarray:
        """The same formula in numpy float32 (for checks and small inputs)."""
        x = np.asarray(x, dtype=np.float32)
        if self.mode == "rescale":
            return x * np.float32(self.scale)
        if self.mode == "none":
            return x.copy()
        if self.mode == "tf":
            return x / np.float32(127.5) - np.float32(1.0)
        if self.mode == "torch":
            return (x / np.float32(255.0) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return x[..., ::-1] - np.asarray(self.mean, np.float32)


def _fraction(scale: float) -> str:
    for den in (255, 127.5, 256, 128):
        if abs(scale * den - 1) < 1e-12:
            return f"1/{den:g}"
    return f"{scale:g}"


def make_preprocessing(mode: str, channels: int, *, rescale: float | None = None, interpolation: str = "nearest",
                       in_model: str | None = None, chosen_by: str = "option") -> Preprocessing:
    """A Preprocessing for an explicit mode. Raises UserError for a mode the input cannot take."""
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"--interpolation {interpolation!r}: choose one of {', '.join(INTERPOLATIONS)}")
    if mode in ("torch", "caffe") and channels != 3:
        raise UserError(f"--preprocess {mode}: needs a 3-channel (RGB) model; this model takes {channels} channel(s)")
    common = {"interpolation": interpolation, "in_model": in_model, "chosen_by": chosen_by}
    if mode == "rescale":
        return Preprocessing("rescale", scale=1 / 255 if rescale is None else rescale, **common)
    if mode == "none":
        return Preprocessing("none", **common)
    if mode == "tf":
        return Preprocessing("tf", scale=1 / 127.5, offset=-1.0, **common)
    if mode == "torch":
        return Preprocessing("torch", scale=1 / 255, mean=IMAGENET_MEAN_RGB, std=IMAGENET_STD_RGB, **common)
    if mode == "caffe":
        return Preprocessing("caffe", mean=IMAGENET_MEAN_BGR, channel_order="BGR", **common)
    raise UserError(f"--preprocess {mode!r}: choose one of {', '.join(MODES)}")


def _first_layers(model):
    """The layers a model applies to its input first, in order, descending into nested models."""
    import keras

    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if not isinstance(model, keras.Sequential):  # Functional: follow the chain from the (single) input
        layers = _functional_chain(model)
    for layer in layers:
        if isinstance(layer, keras.Model):
            yield from _first_layers(layer)
        else:
            yield layer


def _functional_chain(model) -> list:
    """The layers of a Functional model along its input, while the path does not branch."""
    try:
        config = model.get_config()
        entries = config["layers"]
    except Exception:
        return []
    consumers: dict[str, list[str]] = {}
    for entry in entries:
        for source in _inbound_names(entry.get("inbound_nodes", [])):
            consumers.setdefault(source, []).append(entry["name"])
    inputs = [e["name"] for e in entries if e.get("class_name") == "InputLayer"]
    if len(inputs) != 1:
        return []
    chain, current = [], inputs[0]
    while len(consumers.get(current, [])) == 1:
        current = consumers[current][0]
        try:
            chain.append(model.get_layer(current))
        except ValueError:
            break
    return chain


def _inbound_names(nodes) -> list[str]:
    names: list[str] = []

    def walk(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                names.append(obj["config"]["keras_history"][0])
                return
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            if len(obj) >= 3 and isinstance(obj[0], str) and isinstance(obj[1], int):
                names.append(obj[0])  # Keras 2 style [name, node, tensor, kwargs]
                return
            for v in obj:
                walk(v)

    walk(nodes)
    return names


def in_model_preprocessing(model) -> str | None:
    """The model's own preprocessing layer at its start (Rescaling or Normalization, possibly behind
    augmentation layers, inside nested models too), as a description, or None."""
    for layer in _first_layers(model):
        kind = type(layer).__name__
        if kind in _IN_MODEL:
            return f"{layer.name} ({kind}{_rescaling_text(layer) if kind == 'Rescaling' else ''})"
        if kind not in _INACTIVE_AT_INFERENCE:
            return None
    return None


def _rescaling_text(layer) -> str:
    try:
        cfg = layer.get_config()
        scale, offset = cfg.get("scale"), cfg.get("offset", 0.0)
        text = f": × {_fraction(float(scale))}" if isinstance(scale, (int, float)) else ""
        return text + (f" {'+' if offset >= 0 else '−'} {abs(offset):g}" if isinstance(offset, (int, float)) and offset else "")
    except Exception:
        return ""


@dataclass(frozen=True)
class ApplicationBase:
    layer: str  # the nested model's name in the user's model
    family: str
    mode: str  # what its preprocess_input does ("in-model": raw pixels into its own layers)


def application_bases(model) -> list[ApplicationBase]:
    """keras.applications bases recognised in the model (the model itself or nested models), by their names."""
    import keras

    found = []

    def visit(m):
        for pattern, family, mode in APPLICATION_BASES:
            if re.fullmatch(pattern, m.name.lower()):
                found.append(ApplicationBase(m.name, family, mode))
                return
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                visit(layer)

    visit(model)
    return found


def choose_preprocessing(model, channels: int, *, mode: str = "auto", rescale: float | None = None,
                         interpolation: str = "nearest") -> tuple[Preprocessing, list[str]]:
    """The preprocessing to feed the model, and warnings to show (never a silent guess)."""
    in_model = in_model_preprocessing(model)
    bases = application_bases(model)
    warnings: list[str] = []
    if mode == "auto" and rescale is not None:
        mode = "rescale"
    if mode != "auto":
        chosen = make_preprocessing(mode, channels, rescale=rescale, interpolation=interpolation, in_model=in_model)
        if in_model and mode not in ("none",):
            warnings.append(
                f"the model preprocesses its input itself ({in_model}) and --preprocess {mode} is applied before that: "
                "pixels are transformed twice unless that is how it was trained"
            )
        return chosen, warnings
    if in_model:
        return make_preprocessing("none", channels, interpolation=interpolation, in_model=in_model, chosen_by="auto"), warnings
    chosen = make_preprocessing("rescale", channels, interpolation=interpolation, chosen_by="auto")
    for base in bases:
        if base.mode == "in-model":
            warnings.append(
                f"the model holds a keras.applications {base.family} base ('{base.layer}') built without its own "
                "preprocessing layers; reportgen feeds pixels × 1/255: pass --preprocess to say how it was trained"
            )
        else:
            warnings.append(
                f"the model holds a keras.applications {base.family} base ('{base.layer}'), whose preprocess_input uses "
                f"mode '{base.mode}'; reportgen feeds pixels × 1/255 by default: pass --preprocess {base.mode} if it was "
                "trained that way (or --preprocess rescale to keep × 1/255 and silence this)"
            )
    return chosen, warnings


class TFResizer:
    """Decode and resize as `keras.utils.image_dataset_from_directory` does (dataset.Resizer)."""

    def __init__(self, method: str) -> None:
        from reportgen.model.tf import tf

        self.tf = tf
        self.method = method

    def decode(self, data: bytes, channels: int) -> np.ndarray | None:
        try:
            return self.tf.image.decode_image(data, channels=channels, expand_animations=False).numpy()
        except Exception:  # TensorFlow cannot decode it: Pillow will (or will say why not)
            return None

    def resize(self, pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return self.tf.image.resize(pixels, size, method=self.method).numpy().astype(np.float32, copy=False)


def resizer(spec) -> TFResizer | None:
    """None for `nearest` (Pillow, in dataset.py), otherwise a TFResizer for the spec's method."""
    return None if spec.interpolation == "nearest" else TFResizer(spec.interpolation)
