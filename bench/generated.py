"""What the benchmarks run on, generated (no network): JPEGs and the notebook-style model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIDE = 150  # the notebook's input size
CLASSES = ("cats", "dogs")


def make_images(root: Path, count: int) -> Path:
    """`count` smooth-ish random 200x180 RGB JPEGs in root/cats and root/dogs; image i has seed i."""
    from PIL import Image

    for i in range(count):
        cls = CLASSES[i % 2]
        rng = np.random.default_rng(i)
        coarse = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)  # blobs after upsampling
        smooth = np.asarray(Image.fromarray(coarse).resize((200, 180), Image.Resampling.BICUBIC), dtype=np.float32)
        grain = rng.normal(0.0, 12.0, size=smooth.shape).astype(np.float32)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        path = root / cls / f"{cls}_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
    return root


def make_model(path: Path) -> Path:
    """The notebook's Sequential with seeded random weights, compiled like the notebook, saved as .keras."""
    import reportgen.model  # noqa: F401  (loads TensorFlow quietly)
    import keras

    from reportgen.demo import notebook_model

    keras.utils.set_random_seed(0)
    model = notebook_model(SIDE)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.save(path)
    return path
