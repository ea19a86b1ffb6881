"""Tiny synthetic MNIST: learnable stand-ins for digits, written as real IDX files."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from mnist_pipeline.core import data


def synthetic_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable stand-ins for digits: label k lights a 6x6 block at a k-dependent place."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        row, col = 2 + 8 * (k // 4), 2 + 6 * (k % 4)
        images[i, row : row + 6, col : col + 6] = 255
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    magic = data.IMAGES_MAGIC if array.ndim == 3 else data.LABELS_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_folder(folder: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> Path:
    """The four IDX files (gzip-compressed or not) and an MD5SUMS of the decompressed bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = []
    for split, (images_name, labels_name) in data.IDX_FILES.items():
        for name, key in ((images_name, f"x_{split}"), (labels_name, f"y_{split}")):
            raw = idx_bytes(arrays[key])
            target = folder / (f"{name}.gz" if gz else name)
            target.write_bytes(gzip.compress(raw, compresslevel=1) if gz else raw)
            sums.append(f"{hashlib.md5(raw).hexdigest()}  {name}")
    (folder / "MD5SUMS").write_text("\n".join(sums) + "\n")
    return folder


def tiny_arrays(n_train: int = 400, n_test: int = 100) -> dict[str, np.ndarray]:
    x_train, y_train = synthetic_digits(n_train, seed=1)
    x_test, y_test = synthetic_digits(n_test, seed=2)
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
