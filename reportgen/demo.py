"""`reportgen demo`: a cats-vs-dogs style classifier, trained and reported on real photographs that ship offline.

scikit-image bundles a subset of LFW: 100 face and 100 non-face crops, 25 x 25 grayscale. They are
written out as data/train/faces and data/train/non_faces (a binary problem, like cats vs dogs),
a CNN with the classic small-classifier layer stack is trained on them for a few epochs, saved as
.keras, and `build` runs on it with --relevance. Deterministic for a given seed.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from reportgen.errors import UserError

log = logging.getLogger("reportgen")

DEMO_EPOCHS = 6
INPUT_SIZE = 150


def write_demo_data(root: Path) -> Path:
    """Write skimage.data.lfw_subset() as root/data/train/{faces,non_faces}/*.png; returns the train folder."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise UserError("the demo needs scikit-image, which ships its photographs: pip install 'reportgen[demo]'") from None
    images = skdata.lfw_subset()  # (200, 25, 25) floats in 0..1: 100 faces, then 100 non-faces
    train = root / "data" / "train"
    for i, img in enumerate(images):
        cls, n = ("faces", i) if i < 100 else ("non_faces", i - 100)
        path = train / cls / f"{cls}_{n:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img * 255).astype(np.uint8), mode="L").save(path)
    return train


def notebook_model(input_size: int = INPUT_SIZE):
    """The notebook's stack: 4 x [Conv2D 3x3 + ReLU, MaxPooling 2x2] (32, 64, 128, 128), Flatten, Dense 512, Dense 1 sigmoid."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            # names as Keras gives them in a fresh process, given explicitly: the demo's --unit names one
            keras.Input((input_size, input_size, 3)),
            layers.Conv2D(32, 3, activation="relu", name="conv2d"),
            layers.MaxPooling2D(2, name="max_pooling2d"),
            layers.Conv2D(64, 3, activation="relu", name="conv2d_1"),
            layers.MaxPooling2D(2, name="max_pooling2d_1"),
            layers.Conv2D(128, 3, activation="relu", name="conv2d_2"),
            layers.MaxPooling2D(2, name="max_pooling2d_2"),
            layers.Conv2D(128, 3, activation="relu", name="conv2d_3"),
            layers.MaxPooling2D(2, name="max_pooling2d_3"),
            layers.Flatten(name="flatten"),
            layers.Dense(512, activation="relu", name="dense"),
            layers.Dense(1, activation="sigmoid", name="dense_1"),
        ],
        name="faces_vs_non_faces",
    )


def train_demo_model(train: Path, model_path: Path, epochs: int, seed: int, quiet: bool) -> None:
    from reportgen.dataset import InputSpec, discover, iter_batches
    from reportgen.model.tf import keras, tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    dataset = discover(train)
    skipped: list = []
    batches = list(iter_batches(dataset.records, InputSpec(INPUT_SIZE, INPUT_SIZE, 3), 64, skipped))
    x = np.concatenate([b.pixels for b in batches]).astype(np.float32) / 255.0  # the same preprocessing as build
    y = np.array([dataset.records[i].label for b in batches for i in b.indices], dtype=np.float32)
    model = notebook_model()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    log.info("training the demo CNN on %d images for %d epochs", len(x), epochs)
    model.fit(x, y, batch_size=20, epochs=epochs, shuffle=True, verbose=0 if quiet else 2)
    model.save(model_path)


def run_demo(out: Path, *, workdir: Path | None = None, epochs: int | None = None, seed: int = 0, force: bool = False, quiet: bool = False):
    from reportgen.build import BuildOptions, build
    from reportgen.writer import check_target

    check_target(Path(out), force, {})
    with tempfile.TemporaryDirectory(prefix="reportgen-demo-") as tmp:
        work = Path(workdir) if workdir else Path(tmp)
        train = write_demo_data(work)
        model_path = work / "faces_vs_non_faces.keras"
        train_demo_model(train, model_path, epochs or DEMO_EPOCHS, seed, quiet)
        return build(
            BuildOptions(
                model=model_path, data=train, out=Path(out), seed=seed, force=force, quiet=quiet,
                # a face image, and a position of conv2d_3 near the mouth that fires on faces
                images=[train / "faces" / "faces_053.png"], units=["conv2d_3:10:7:114"], relevance=True,
                model_label=model_path.name, data_label="data/train",
            )
        )
