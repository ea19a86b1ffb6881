"""Files a user wants predicted -> raw (n, 28, 28) pixels as MNIST has them. No MLflow.

A picture of any size becomes what MNIST holds: a white digit on black, its ink scaled
to fit 20x20 and centred by centre of mass in a 28x28 frame. An IDX images file is read
as it is.
"""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from mnist_pipeline.core.data import IMAGES_MAGIC, DataError, open_idx, read_idx

DIGIT_BOX = 20  # MNIST fits each digit's ink in 20x20, then centres it in 28x28
FRAME = 28


def load_inputs(paths: list[str | Path]) -> tuple[list[str], np.ndarray]:
    """(one name per image, uint8 pixels (n, 28, 28)) for PNG/JPEG/... files and IDX files."""
    names, images = [], []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if _is_idx(path):
            batch = read_idx(path, IMAGES_MAGIC)
            names += [f"{path}[{i}]" for i in range(len(batch))]
        else:
            batch = picture_to_mnist(path)[None]
            names.append(str(path))
        images.append(batch)
    return names, np.concatenate(images)


def _is_idx(path: Path) -> bool:
    try:
        with open_idx(path) as f:
            return f.read(4) == IMAGES_MAGIC.to_bytes(4, "big")
    except (OSError, EOFError):
        return False


def picture_to_mnist(path: Path) -> np.ndarray:
    """A picture file as a 28x28 uint8 MNIST-style digit."""
    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable image ({type(err).__name__}); give PNG, JPEG or an IDX file") from None
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() > 127:  # dark digit on light paper: MNIST is white on black
        grey = 255 - grey
    if grey.max() == 0:  # no ink at all
        return np.zeros((FRAME, FRAME), np.uint8)
    ink = ndimage.find_objects((grey > 0.25 * grey.max()).astype(int))[0]  # the ink's bounding box
    digit = Image.fromarray(grey[ink].astype(np.uint8))
    scale = DIGIT_BOX / max(digit.size)
    size = (max(1, round(digit.width * scale)), max(1, round(digit.height * scale)))
    digit = np.asarray(digit.resize(size, Image.Resampling.LANCZOS), dtype=np.float32)
    frame = np.pad(digit, [((FRAME - n) // 2, (FRAME - n + 1) // 2) for n in digit.shape])  # in the middle
    frame = ndimage.shift(frame, (FRAME - 1) / 2 - np.array(ndimage.center_of_mass(frame)), order=1)
    return np.clip(frame, 0, 255).round().astype(np.uint8)


PIXEL_MAX = 255  # raw MNIST pixels: 0 (black) to 255 (white ink)


def pixel_problem(pixels: np.ndarray) -> str | None:
    """Why ``pixels`` (numbers, any shape) are not raw MNIST pixels, or None if they are."""
    if pixels.size == 0:
        return "no images given"
    finite = np.isfinite(pixels)
    if not finite.all():
        return f"pixels must be finite numbers in 0-{PIXEL_MAX}: got {pixels[~finite].flat[0]}"
    low, high = pixels.min(), pixels.max()
    if low < 0 or high > PIXEL_MAX:
        return f"pixels must be in 0-{PIXEL_MAX}: got {low if low < 0 else high}"
    return None
