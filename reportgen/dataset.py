"""Find a dataset's images and turn them into model-ready batches, like Keras's `flow_from_directory`.

Layout: `root/<class>/**/<image>` (class indices in sorted folder order, images in sub-folders of a
class folder belong to that class) or a flat `root/<image>` folder (no labels). Preprocessing
matches `flow_from_directory`'s defaults: nearest-neighbour resize to the model's input size,
RGB (or grayscale for 1-channel models); other resize methods are those of
`image_dataset_from_directory` (tf.image.resize, given as a function). The model's own
preprocessing (x/255, [-1, 1], ...) is applied later, in the graph. Two deliberate differences,
both about files Keras mishandles: the EXIF orientation is applied, and 16-bit images are scaled to
8 bits instead of being passed through as 0..65535.

A file that cannot be read is never fatal: it is recorded in `skipped` with a reason and the
pass goes on. No TensorFlow here.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from reportgen.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp")
# Pillow's own decompression-bomb threshold: above it Pillow warns, at twice it refuses. We refuse
# from the header alone, before any pixel is decoded, so a 50,000 x 50,000 file costs nothing.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
_HIDDEN_DIRS = {"__MACOSX"}


@dataclass(frozen=True)
class InputSpec:
    """The image shape a model takes: height, width, channels (1 or 3), and how images are resized to it."""

    height: int
    width: int
    channels: int
    # "nearest": Pillow, as flow_from_directory; any other method needs a `resize` function (tf.image.resize)
    interpolation: str = "nearest"


@dataclass(frozen=True)
class ImageRecord:
    """One image file of the dataset. `index` is its position in dataset order (the tie-break order)."""

    index: int
    path: Path
    rel: str  # path relative to the dataset root, with '/' separators
    label: int | None


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Dataset:
    root: Path
    classes: list[str]  # empty for a flat folder
    records: list[ImageRecord]
    ignored: list[Skipped] = field(default_factory=list)  # files that are not images, or not in a class
    skipped: list[Skipped] = field(default_factory=list)  # images that could not be read (filled by the pass)

    @property
    def labelled(self) -> bool:
        return bool(self.classes)

    @property
    def class_indices(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _HIDDEN_DIRS


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_files(folder: Path, unreadable: list[Path] | None = None) -> list[Path]:
    """All non-hidden files below `folder`, sorted like Keras (by folder, then name); links to folders
    are not followed. Folders that cannot be listed go to `unreadable`."""
    found = []
    errors: list[OSError] = []
    for dirpath, dirnames, filenames in sorted(os.walk(folder, onerror=errors.append), key=lambda entry: entry[0]):
        dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not _is_hidden(f))
    if unreadable is not None:
        unreadable.extend(Path(e.filename) for e in errors if e.filename)
    return found


def discover(root: Path | str) -> Dataset:
    """List the dataset's images and classes. Raises UserError when there is nothing to work on."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: no such folder (--data takes a folder of class folders, or of images)")
    if not root.is_dir():
        raise UserError(f"{root}: is a file, not a folder (--data takes a folder of class folders, or of images)")

    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise UserError(f"{root}: cannot list the folder ({exc.strerror or exc})") from None
    class_dirs = [e for e in entries if e.is_dir(follow_symlinks=True) and not _is_hidden(e.name)]
    loose = [Path(e.path) for e in entries if e.is_file() and not _is_hidden(e.name)]
    ignored: list[Skipped] = []

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    records: list[ImageRecord] = []
    classes: list[str] = []
    unreadable: list[Path] = []
    if class_dirs:
        classes = [e.name for e in class_dirs]
        for label, entry in enumerate(class_dirs):
            for path in _walk_files(Path(entry.path), unreadable):
                if _is_image_name(path.name):
                    records.append(ImageRecord(len(records), path, rel(path), label))
                else:
                    ignored.append(Skipped(rel(path), "not an image file (by its extension)"))
        for path in loose:
            ignored.append(Skipped(rel(path), "not inside a class folder"))
    else:
        for path in loose:
            if _is_image_name(path.name):
                records.append(ImageRecord(len(records), path, rel(path), None))
            else:
                ignored.append(Skipped(rel(path), "not an image file (by its extension)"))

    for folder in unreadable:
        ignored.append(Skipped(rel(folder) + "/", "cannot list the folder (permission denied or gone): its images are left out"))
    if not records:
        where = f"in its {len(classes)} class folder(s)" if classes else "in it"
        raise UserError(
            f"{root}: no images found {where} (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return Dataset(root=root, classes=classes, records=records, ignored=ignored)


class BadImage(Exception):
    """An image file that cannot be used; the message is the reason shown to the user."""


def _to_8bit(img: Image.Image) -> Image.Image:
    """16- and 32-bit integer images (16-bit PNG opens as 'I;16' or 'I') scaled to 8-bit grayscale."""
    arr = np.asarray(img)
    if arr.dtype.kind in "ui" and arr.size:
        top = 65535 if arr.max() > 255 or img.mode.startswith("I;16") else 255
        arr = np.clip(np.round(arr.astype(np.float64) * (255.0 / top)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), mode="L")


class Resizer(Protocol):
    """How `image_dataset_from_directory` reads an image (given by model/preprocess.py: TensorFlow)."""

    def decode(self, data: bytes, channels: int) -> np.ndarray | None:
        """uint8 [h, w, channels] as tf.image.decode_image gives it, or None when it cannot decode the file."""

    def resize(self, pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """float32 [height, width, channels], as tf.image.resize gives it."""


# The formats tf.image.decode_image reads; other files (and 16-bit or CMYK ones) are decoded by Pillow.
_TF_FORMATS = {"JPEG", "PNG", "GIF", "BMP"}
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def load_pixels(path: Path, spec: InputSpec, resizer: Resizer | None = None) -> np.ndarray:
    """Decode one image file to [height, width, channels], as Keras's loaders would. Raises BadImage.

    `nearest` (flow_from_directory): Pillow decodes (the EXIF orientation applied, 16-bit scaled to
    8), resizes with its nearest neighbour, and the result is uint8. Any other method
    (image_dataset_from_directory): TensorFlow decodes, as Keras does (no EXIF rotation), and
    tf.image.resize gives float32 pixels, not rounded; files TensorFlow cannot decode, 16-bit and
    CMYK images are decoded by Pillow as for `nearest`, then resized the same way.
    """
    if spec.interpolation != "nearest" and resizer is None:
        raise ValueError(f"interpolation {spec.interpolation!r} needs a resizer")
    try:
        # no stat first: on some file systems a metadata call costs as much as a small image's decoding
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise BadImage(f"{w} x {h} = {w * h:,} pixels is more than the {MAX_PIXELS:,}-pixel limit")
            if resizer is not None and img.format in _TF_FORMATS and img.mode not in _WIDE_MODES + ("CMYK",):
                decoded = resizer.decode(path.read_bytes(), spec.channels)
                if decoded is not None:
                    return resizer.resize(decoded, (spec.height, spec.width))
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # a copy of every image otherwise, rotated or not
            if img.mode in _WIDE_MODES:
                img = _to_8bit(img)
            mode = "RGB" if spec.channels == 3 else "L"
            if img.mode != mode:  # convert() to its own mode is a copy
                img = img.convert(mode)
            if resizer is None and img.size != (spec.width, spec.height):
                img = img.resize((spec.width, spec.height), Image.Resampling.NEAREST)
            arr = np.asarray(img, dtype=np.uint8)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("empty file (0 bytes)" if _is_empty(path) else "not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)):,} pixels" if found else "its size"
        raise BadImage(f"{size} is more than the {MAX_PIXELS:,}-pixel limit") from None
    except OSError as exc:
        if exc.errno is not None:  # opening it failed (missing, a dangling link, no permission), not decoding
            raise BadImage(f"cannot read the file ({exc.strerror or exc})") from None
        raise BadImage(f"corrupt or truncated image ({exc})") from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"corrupt or truncated image ({exc})") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if resizer is not None:
        arr = resizer.resize(arr, (spec.height, spec.width))
    return arr


@dataclass
class Batch:
    indices: np.ndarray  # int64 dataset indices of the images in this batch
    pixels: np.ndarray  # [n, height, width, channels]: uint8, or float32 for a tf.image.resize method


def iter_batches(
    records: list[ImageRecord],
    spec: InputSpec,
    batch_size: int,
    skipped: list[Skipped],
    workers: int | None = None,
    resizer: Resizer | None = None,
) -> Iterator[Batch]:
    """Decode `records` in a small thread pool and yield full batches in dataset order.

    Bad files are appended to `skipped` and left out of the batches. At most a few batches are
    decoded ahead, so memory does not grow with the dataset.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    ahead = max(2 * batch_size, 8)
    pending: collections.deque = collections.deque()
    todo = iter(records)
    idx: list[int] = []
    pix: list[np.ndarray] = []

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reportgen-decode") as pool:

        def refill() -> None:
            while len(pending) < ahead:
                rec = next(todo, None)
                if rec is None:
                    return
                pending.append((rec, pool.submit(load_pixels, rec.path, spec, resizer)))

        refill()
        while pending:
            rec, future = pending.popleft()
            refill()
            try:
                arr = future.result()
            except BadImage as exc:
                skipped.append(Skipped(rec.rel, str(exc)))
                continue
            idx.append(rec.index)
            pix.append(arr)
            if len(idx) == batch_size:
                yield Batch(np.asarray(idx, dtype=np.int64), np.stack(pix))
                idx, pix = [], []
        if idx:
            yield Batch(np.asarray(idx, dtype=np.int64), np.stack(pix))


def read_class_names(path: Path, classes: list[str]) -> list[str]:
    """Readable names for the class folders, from --class-names FILE, in class-index order.

    Accepted: a JSON object {folder: name}, or {index: name} or {index: [folder, name]} (Keras's
    imagenet_class_index.json); a JSON list of names; a text file with one name per line in
    class-index order, or lines `folder<TAB>name` (ImageNet's words.txt; a space works too when the
    first word is a class folder, as in LOC_synset_mapping.txt). Folders it does not name keep their name.
    """
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(f"--class-names {path}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UserError(f"--class-names {path}: is not a UTF-8 text or JSON file") from None
    if not classes:
        raise UserError(f"--class-names {path}: the dataset is a flat folder with no classes to name")
    names = dict.fromkeys(classes)
    stripped = text.strip()
    if stripped.startswith(("{", "[")):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise UserError(f"--class-names {path}: not valid JSON ({exc})") from None
        if isinstance(data, list):
            data = {str(i): v for i, v in enumerate(data)}
        if not isinstance(data, dict):
            raise UserError(f"--class-names {path}: expected a JSON object or list of names")
        for key, value in data.items():
            if isinstance(value, list) and len(value) == 2:  # {"0": ["n01440764", "tench"]}
                key, value = value
            folder = key if key in names else (classes[int(key)] if str(key).isdigit() and int(key) < len(classes) else None)
            if folder is not None and isinstance(value, str):
                names[folder] = value
    else:
        lines = [line.rstrip("\n\r") for line in text.splitlines() if line.strip()]
        split = [line.split("\t", 1) if "\t" in line else line.split(" ", 1) for line in lines]
        if all(len(parts) == 2 and parts[0] in names for parts in split):
            for folder, name in split:
                names[folder] = name.strip()
        elif any("\t" in line for line in lines):
            found = [parts for parts in split if len(parts) == 2 and parts[0] in names]
            if not found:
                raise UserError(f"--class-names {path}: none of its `folder<TAB>name` lines names a class folder of the dataset")
            for folder, name in found:
                names[folder] = name.strip()
        elif len(lines) == len(classes):
            for folder, name in zip(classes, lines):
                names[folder] = name.strip()
        else:
            raise UserError(
                f"--class-names {path}: has {len(lines)} lines for {len(classes)} classes; give one name per line in "
                "class-index order, or `folder<TAB>name` lines"
            )
    return [names[c] if names[c] else c for c in classes]
