"""Generate awkward dataset files on the fly for the tests.

Nothing binary is committed: every helper writes one file (creating parent
directories) and returns its path.  Pure Python + Pillow + numpy.

Pillow 13 behaviour on the bad files (checked by running this module):

* truncated JPEG   -- ``Image.open`` succeeds (header is intact); ``.load()``
  raises ``OSError`` ("image file is truncated ...") as long as
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` is False (the default).
* zero-byte file, text named ``*.jpg`` -- ``Image.open`` raises
  ``PIL.UnidentifiedImageError`` (a subclass of ``OSError``).
* huge PNG (50000 x 50000 declared) -- ``Image.open`` raises
  ``PIL.Image.DecompressionBombError`` by default (2.5e9 px is more than
  twice ``Image.MAX_IMAGE_PIXELS``); with ``MAX_IMAGE_PIXELS = None`` it opens
  lazily and reports size (50000, 50000), mode RGB, without allocating.
  Never call ``.load()`` on it.
* 16-bit gray PNG -- opens as mode ``'I;16'`` (IHDR bit depth 16, colour
  type 0).
"""

from __future__ import annotations

import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

__all__ = [
    "EXIF_EXPECTED",
    "NASTY_NAMES",
    "make_rgb_jpeg",
    "make_rgb_png",
    "make_bmp",
    "make_gray_png",
    "make_truncated_jpeg",
    "make_zero_byte",
    "make_text_as_jpeg",
    "make_cmyk_jpeg",
    "make_rgba_png",
    "make_16bit_gray_png",
    "make_palette_gif",
    "make_exif_rotated_jpeg",
    "make_huge_png",
    "make_hidden_and_junk",
    "make_dataset",
    "png_ihdr",
]


def _prep(path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _noise(size, seed, channels=3) -> np.ndarray:
    w, h = size
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------------
# valid images
# --------------------------------------------------------------------------

def make_rgb_jpeg(path, size=(20, 16), seed=0) -> pathlib.Path:
    """Valid random-noise RGB JPEG of ``size`` (W, H)."""
    path = _prep(path)
    Image.fromarray(_noise(size, seed), "RGB").save(path, format="JPEG", quality=90)
    return path


def make_rgb_png(path, size=(20, 16), seed=0) -> pathlib.Path:
    """Valid random-noise RGB PNG of ``size`` (W, H)."""
    path = _prep(path)
    Image.fromarray(_noise(size, seed), "RGB").save(path, format="PNG")
    return path


def make_bmp(path, size=(20, 16), seed=0) -> pathlib.Path:
    """Valid random-noise RGB BMP of ``size`` (W, H)."""
    path = _prep(path)
    Image.fromarray(_noise(size, seed), "RGB").save(path, format="BMP")
    return path


def make_gray_png(path, size=(20, 16), seed=0) -> pathlib.Path:
    """Valid random-noise 8-bit grayscale (mode ``L``) PNG."""
    path = _prep(path)
    Image.fromarray(_noise(size, seed, channels=1), "L").save(path, format="PNG")
    return path


def make_cmyk_jpeg(path, size=(20, 16), seed=0) -> pathlib.Path:
    """Valid random-noise JPEG stored in mode ``CMYK`` (opens as CMYK)."""
    path = _prep(path)
    Image.fromarray(_noise(size, seed, channels=4), "CMYK").save(
        path, format="JPEG", quality=90
    )
    return path


def make_rgba_png(path, size=(20, 16), seed=0) -> pathlib.Path:
    """RGBA PNG: noise RGB, alpha ramping 0..255 left to right."""
    path = _prep(path)
    w, h = size
    arr = _noise(size, seed, channels=4)
    arr[..., 3] = np.linspace(0, 255, w).round().astype(np.uint8)[None, :]
    Image.fromarray(arr, "RGBA").save(path, format="PNG")
    return path


def make_16bit_gray_png(path, size=(64, 8)) -> pathlib.Path:
    """True 16-bit grayscale PNG: horizontal ramp 0..65535 (opens as ``I;16``).

    IHDR bit depth is 16, colour type 0; see :func:`png_ihdr`.
    """
    path = _prep(path)
    w, h = size
    ramp = np.linspace(0, 65535, w).round().astype(np.uint16)
    arr = np.ascontiguousarray(np.broadcast_to(ramp, (h, w)))
    Image.frombytes("I;16", (w, h), arr.astype("<u2").tobytes()).save(path, format="PNG")
    return path


def make_palette_gif(path, size=(20, 16), seed=0) -> pathlib.Path:
    """Palette (mode ``P``) GIF with 16 colours."""
    path = _prep(path)
    w, h = size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 16, size=(h, w), dtype=np.uint8)
    img = Image.fromarray(idx, "L").convert("P")  # identity grey palette first
    palette = rng.integers(0, 256, size=16 * 3, dtype=np.uint8).tolist()
    img.putpalette(palette + [0] * (768 - len(palette)))
    img.save(path, format="GIF")
    return path


# --------------------------------------------------------------------------
# broken / not-images
# --------------------------------------------------------------------------

def make_truncated_jpeg(path, size=(128, 128), seed=0) -> pathlib.Path:
    """Noisy JPEG cut to half its bytes.

    ``Image.open`` succeeds; ``.load()`` raises ``OSError`` (image file is
    truncated) with the default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``.
    """
    path = _prep(path)
    make_rgb_jpeg(path, size=size, seed=seed)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def make_zero_byte(path) -> pathlib.Path:
    """Empty file (``Image.open`` -> ``UnidentifiedImageError``)."""
    path = _prep(path)
    path.write_bytes(b"")
    return path


def make_text_as_jpeg(path) -> pathlib.Path:
    """UTF-8 text file (give it a ``.jpg`` name); not an image."""
    path = _prep(path)
    path.write_text("This is not a JPEG. Ceci n'est pas une image. 日本語\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# EXIF orientation
# --------------------------------------------------------------------------

_RED, _BLUE, _GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)

#: What :func:`make_exif_rotated_jpeg` writes and what ``ImageOps.exif_transpose``
#: must give.  Stored (raw) pixels are 30 x 20: columns x<10 red, top-right
#: block (x>=20, y<10) green, rest blue.  Orientation 6 = rotate 90 deg CW for
#: display, so the transposed image is 20 x 30 with the top 10 rows red, the
#: bottom-right 10 x 10 block green and the rest blue.  Colours are JPEG-lossy:
#: compare with a tolerance (``tolerance``, max abs per channel).  ``points``
#: are (x, y) -> RGB in the *transposed* image, chosen away from block edges;
#: ``raw_points`` likewise for the image without transposition.  Points
#: distinguish orientation 6 from 8 (90 CCW), 5/7 (transposes) and no-op.
EXIF_EXPECTED = {
    "orientation": 6,
    "stored_size": (30, 20),
    "transposed_size": (20, 30),
    "top_left": _RED,          # transposed pixel (0, 0)
    "raw_top_left": _RED,      # stored pixel (0, 0) -- same here, use points
    "points": {
        (0, 0): _RED,
        (10, 4): _RED,
        (4, 15): _BLUE,
        (15, 15): _BLUE,
        (4, 25): _BLUE,
        (15, 25): _GREEN,
    },
    "raw_points": {
        (4, 10): _RED,
        (15, 10): _BLUE,
        (25, 4): _GREEN,
        (25, 15): _BLUE,
    },
    "tolerance": 60,
}


def make_exif_rotated_jpeg(path) -> pathlib.Path:
    """30x20 JPEG with EXIF Orientation=6; see :data:`EXIF_EXPECTED`."""
    path = _prep(path)
    w, h = EXIF_EXPECTED["stored_size"]
    arr = np.empty((h, w, 3), dtype=np.uint8)
    arr[:] = _BLUE
    arr[:, :10] = _RED
    arr[:10, 20:] = _GREEN
    exif = Image.Exif()
    exif[0x0112] = EXIF_EXPECTED["orientation"]
    Image.fromarray(arr, "RGB").save(
        path, format="JPEG", quality=95, subsampling=0, exif=exif.tobytes()
    )
    return path


# --------------------------------------------------------------------------
# decompression bomb
# --------------------------------------------------------------------------

def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + tag
        + data
        + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    )


def png_ihdr(path) -> dict:
    """Parse a PNG's IHDR without Pillow: width, height, bit_depth, color_type."""
    with open(path, "rb") as fh:
        head = fh.read(33)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"not a PNG: {path}")
    w, h, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return {"width": w, "height": h, "bit_depth": depth, "color_type": ctype}


def make_huge_png(path, width=50000, height=50000) -> pathlib.Path:
    """Tiny PNG whose IHDR declares ``width`` x ``height`` 8-bit RGB.

    Valid CRCs; the IDAT holds only one compressed all-zero scanline, then
    IEND.  ``Image.open`` reads the size from the header without allocating,
    but by default raises ``Image.DecompressionBombError`` (pixels >
    2 * MAX_IMAGE_PIXELS).  Never ``.load()`` it (would need ~7.5 GB).
    """
    path = _prep(path)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (3 * width)  # filter byte + one scanline
    idat = zlib.compress(row, 9)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    return path


# --------------------------------------------------------------------------
# junk files and names
# --------------------------------------------------------------------------

def make_hidden_and_junk(folder) -> list[pathlib.Path]:
    """Write .DS_Store, ._hidden.jpg, Thumbs.db, notes.txt, labels.csv."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        # macOS Finder metadata ("Bud1" buddy allocator header)
        ".DS_Store": b"\x00\x00\x00\x01Bud1" + b"\x00" * 56,
        # AppleDouble resource fork: magic 0x00051607, version 0x00020000
        "._hidden.jpg": b"\x00\x05\x16\x07\x00\x02\x00\x00" + b"Mac OS X        " + b"\x00" * 40,
        # Windows thumbnail cache: OLE2 compound-file magic
        "Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 56,
        "notes.txt": "Some notes about this dataset.\n".encode("utf-8"),
        "labels.csv": b"filename,label\nimg_000.png,cat\nimg_001.png,dog\n",
    }
    out = []
    for name, data in files.items():
        p = folder / name
        p.write_bytes(data)
        out.append(p)
    return out


#: File base names (no extension) that are valid on Linux but awkward in
#: URLs, HTML, shells and CSV.  All distinct, no '/' or NUL, each < 255 bytes.
NASTY_NAMES = [
    "with space",
    "  leading and trailing  ",
    "hash#tag",
    "question?mark",
    "percent%sign",
    "already%20encoded",
    "single'quote",
    'double"quote',
    "less<than",
    "greater>than",
    "amp&ersand",
    "café",
    "Ørsted",
    "日本",
    '"><img src=x onerror=alert(2)>',
    "semi;colon",
    "back\\slash",
    "plus+sign",
    "-leading-dash",
]


def make_dataset(root, spec) -> dict[str, list[pathlib.Path]]:
    """Write ``spec = {class_name: n}`` valid 16x16 RGB PNGs per class.

    Files are ``root/class_name/img_000.png`` ...; content is noise seeded
    deterministically from (crc32(class_name), index).  Returns
    ``{class_name: [paths]}``.
    """
    root = pathlib.Path(root)
    out: dict[str, list[pathlib.Path]] = {}
    for cls, n in spec.items():
        cls_seed = zlib.crc32(cls.encode("utf-8"))
        paths = []
        for i in range(n):
            paths.append(
                make_rgb_png(root / cls / f"img_{i:03d}.png", size=(16, 16), seed=[cls_seed, i])
            )
        out[cls] = paths
    return out


# --------------------------------------------------------------------------
# self-check
# --------------------------------------------------------------------------

def _describe(p: pathlib.Path) -> str:
    try:
        with Image.open(p) as im:
            return f"open ok: mode={im.mode} size={im.size} format={im.format}"
    except Exception as e:  # noqa: BLE001
        return f"open -> {type(e).__name__}: {e}"[:140]


def _load_outcome(p: pathlib.Path) -> str:
    try:
        with Image.open(p) as im:
            im.load()
        return "load ok"
    except Exception as e:  # noqa: BLE001
        return f"load -> {type(e).__name__}: {e}"[:140]


if __name__ == "__main__":
    import tempfile
    import warnings

    from PIL import ImageFile, ImageOps, UnidentifiedImageError

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with tempfile.TemporaryDirectory() as tmp:
        d = pathlib.Path(tmp) / "sub" / "dir"
        made = {
            "rgb_jpeg": make_rgb_jpeg(d / "rgb.jpg"),
            "rgb_png": make_rgb_png(d / "rgb.png"),
            "bmp": make_bmp(d / "img.bmp"),
            "gray_png": make_gray_png(d / "gray.png"),
            "truncated_jpeg": make_truncated_jpeg(d / "trunc.jpg"),
            "zero_byte": make_zero_byte(d / "zero.jpg"),
            "text_as_jpeg": make_text_as_jpeg(d / "text.jpg"),
            "cmyk_jpeg": make_cmyk_jpeg(d / "cmyk.jpg"),
            "rgba_png": make_rgba_png(d / "rgba.png"),
            "16bit_gray_png": make_16bit_gray_png(d / "gray16.png"),
            "palette_gif": make_palette_gif(d / "pal.gif"),
            "exif_rotated_jpeg": make_exif_rotated_jpeg(d / "exif6.jpg"),
            "huge_png": make_huge_png(d / "huge.png"),
        }
        for key, p in made.items():
            line = f"{key:18s} {p.stat().st_size:7d} B  {_describe(p)}"
            if key not in ("huge_png", "zero_byte", "text_as_jpeg"):
                line += f"  | {_load_outcome(p)}"
            print(line)

        # --- specific checks -------------------------------------------------
        # truncated: opens, load raises OSError
        with Image.open(made["truncated_jpeg"]) as im:
            assert im.size == (128, 128)
            try:
                im.load()
            except OSError:
                pass
            else:
                raise AssertionError("truncated JPEG loaded")
        for key in ("zero_byte", "text_as_jpeg"):
            try:
                Image.open(made[key])
            except UnidentifiedImageError:
                pass
            else:
                raise AssertionError(key)

        # 16-bit
        ih = png_ihdr(made["16bit_gray_png"])
        assert ih["bit_depth"] == 16 and ih["color_type"] == 0, ih
        with Image.open(made["16bit_gray_png"]) as im:
            assert im.mode in ("I;16", "I"), im.mode
            a = np.asarray(im)
            assert a.min() == 0 and a.max() == 65535, (a.min(), a.max())
        print("16-bit:", ih, "pillow mode", im.mode, "min/max", a.min(), a.max())

        # other modes
        for key, mode in [("cmyk_jpeg", "CMYK"), ("rgba_png", "RGBA"),
                          ("palette_gif", "P"), ("gray_png", "L")]:
            with Image.open(made[key]) as im:
                assert im.mode == mode, (key, im.mode)
        with Image.open(made["rgba_png"]) as im:
            alpha = np.asarray(im)[..., 3]
            assert alpha.min() == 0 and alpha.max() == 255

        # EXIF
        tol = EXIF_EXPECTED["tolerance"]

        def _close(px, ref):
            return all(abs(int(a) - b) <= tol for a, b in zip(px, ref))

        with Image.open(made["exif_rotated_jpeg"]) as im:
            assert im.size == EXIF_EXPECTED["stored_size"]
            assert im.getexif()[0x0112] == 6
            raw = im.convert("RGB")
            for xy, ref in EXIF_EXPECTED["raw_points"].items():
                assert _close(raw.getpixel(xy), ref), (xy, raw.getpixel(xy))
            t = ImageOps.exif_transpose(im).convert("RGB")
        assert t.size == EXIF_EXPECTED["transposed_size"], t.size
        assert _close(t.getpixel((0, 0)), EXIF_EXPECTED["top_left"])
        for xy, ref in EXIF_EXPECTED["points"].items():
            assert _close(t.getpixel(xy), ref), (xy, t.getpixel(xy))
        print("exif: transposed", t.size, "top-left", t.getpixel((0, 0)))

        # huge PNG: default behaviour, then size with the limit disabled
        hp = made["huge_png"]
        ih = png_ihdr(hp)
        assert (ih["width"], ih["height"], ih["bit_depth"], ih["color_type"]) == (50000, 50000, 8, 2)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:
                with Image.open(hp) as im:
                    default = f"opened, size {im.size}"
            except Image.DecompressionBombError as e:
                default = f"DecompressionBombError: {e}"
        print("huge default open:", default, "| warnings:", [str(x.message) for x in w])
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with Image.open(hp) as im:
                assert im.size == (50000, 50000) and im.mode == "RGB"
                print("huge with MAX_IMAGE_PIXELS=None:", im.mode, im.size)
        finally:
            Image.MAX_IMAGE_PIXELS = saved

        # junk + names + dataset
        junk = make_hidden_and_junk(pathlib.Path(tmp) / "junk")
        for p in junk:
            print(f"junk {p.name:14s} {p.stat().st_size:4d} B  {_describe(p)}")
        assert len(set(NASTY_NAMES)) == len(NASTY_NAMES)
        nd = pathlib.Path(tmp) / "nasty"
        for i, name in enumerate(NASTY_NAMES):
            assert "/" not in name and "\0" not in name
            p = make_rgb_png(nd / f"{name}.png", seed=i)
            assert p.exists() and p.name == f"{name}.png"
        assert sorted(x.name for x in nd.iterdir()) == sorted(f"{n}.png" for n in NASTY_NAMES)
        print(f"nasty names: {len(NASTY_NAMES)} files created OK")

        ds = make_dataset(pathlib.Path(tmp) / "ds", {"cat": 3, "dog": 2})
        blobs = [np.asarray(Image.open(p)).tobytes() for ps in ds.values() for p in ps]
        assert len(set(blobs)) == len(blobs) == 5
        ds2 = make_dataset(pathlib.Path(tmp) / "ds2", {"cat": 3, "dog": 2})
        assert [p.read_bytes() for p in ds2["cat"]] == [p.read_bytes() for p in ds["cat"]]
        print("dataset:", {k: [p.name for p in v] for k, v in ds.items()})
    print("all self-checks passed")
