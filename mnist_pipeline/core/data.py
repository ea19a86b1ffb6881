"""MNIST loading and integrity checks. NumPy only: no Keras model code, no MLflow.

A data folder holds either the four canonical IDX files (``.gz`` or uncompressed,
optionally with an ``MD5SUMS`` of the decompressed files) or a Keras-format
``mnist.npz``. Pixels stay raw uint8 0-255: the model does its own scaling.
"""

import gzip
import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_pipeline.core.errors import UserError

DATA_DIR_ENV = "MNIST_DATA_DIR"
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
IDX_FILES = {  # split -> (images file, labels file), canonical names
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
NPZ_FILE = "mnist.npz"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")  # as keras.datasets.mnist writes it
KERAS_MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
HOW_TO_POINT = (
    f"pass data_dir (-P data_dir=...) or set {DATA_DIR_ENV} to a folder holding the four "
    f"MNIST IDX files (.gz or not) or {NPZ_FILE}"
)


class DataError(UserError, ValueError):
    """Data that cannot be used; the message names the file and the problem in one line."""


@dataclass(frozen=True)
class Mnist:
    """The four arrays, where they came from, and a digest of their content."""

    x_train: np.ndarray  # (n, 28, 28) uint8
    y_train: np.ndarray  # (n,) uint8, 0-9
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # folder, file, or the URL keras.datasets.mnist downloads from
    digest: str  # md5 of the content, the same whatever the container format


def load(data_dir: str | os.PathLike | None = None) -> Mnist:
    """Load MNIST from ``data_dir``, else ``$MNIST_DATA_DIR``, else Keras' downloader."""
    folder = data_dir or os.environ.get(DATA_DIR_ENV)
    if not folder:
        return _load_keras_download()
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: no such data folder; {HOW_TO_POINT}, or set neither to download MNIST with Keras")
    if _find(path, IDX_FILES["train"][0]):
        return _load_idx_folder(path)
    if (path / NPZ_FILE).is_file():
        return _load_npz(path / NPZ_FILE)
    raise DataError(f"{path}: holds neither the MNIST IDX files nor {NPZ_FILE}; {HOW_TO_POINT}")


def load_for(data_dir: str, validation_splits=()) -> Mnist:
    """``load(data_dir or None)``, refused (DataError) if any of ``validation_splits`` would
    leave no training images: a command checks its data before any run exists."""
    mnist = load(data_dir or None)
    for fraction in validation_splits:
        split_validation(mnist.x_train, mnist.y_train, fraction)
    return mnist


def split_validation(x: np.ndarray, y: np.ndarray, fraction: float):
    """Hold out the last ``fraction`` of the training set, as Keras' validation_split does."""
    n_val = max(1, int(round(len(x) * fraction)))
    if n_val >= len(x):
        raise DataError(f"validation_split={fraction} leaves no training images of {len(x)}")
    return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])


def read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file (.gz or not), checked against ``magic`` and its own header."""
    return _parse_idx(path, _read_bytes(path), magic)


def _find(folder: Path, name: str) -> Path | None:
    return next((path for path in (folder / name, folder / f"{name}.gz") if path.is_file()), None)


def open_idx(path: Path):
    """An IDX file opened for reading its bytes, through gzip if its name ends in .gz."""
    return (gzip.open if path.suffix == ".gz" else open)(path, "rb")


def _read_bytes(path: Path) -> bytes:
    try:
        with open_idx(path) as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot be read ({err})") from None


def _parse_idx(path: Path, raw: bytes, magic: int) -> np.ndarray:
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated: {len(raw)} bytes, shorter than its IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and dims[1:] != IMAGE_SHAPE:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: {problem}: {len(raw)} bytes, header promises {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_md5sums(folder: Path) -> dict[str, str]:
    """File name -> md5 from the folder's MD5SUMS (``md5sum``'s lines; others are skipped), if any."""
    sums = folder / "MD5SUMS"
    lines = sums.read_text().splitlines() if sums.is_file() else []
    return {parts[1].lstrip("*"): parts[0].lower() for parts in map(str.split, lines) if len(parts) == 2}


def _load_idx_folder(folder: Path) -> Mnist:
    md5sums = _read_md5sums(folder)
    arrays = {}
    for split, names in IDX_FILES.items():
        for name, magic, key in zip(names, (IMAGES_MAGIC, LABELS_MAGIC), ("x", "y")):
            path = _find(folder, name)
            if path is None:
                raise DataError(f"{folder / name}[.gz]: missing; {HOW_TO_POINT}")
            raw = _read_bytes(path)
            digest = hashlib.md5(raw).hexdigest()
            if name in md5sums and md5sums[name] != digest:
                raise DataError(
                    f"{path}: MD5 {digest} of the decompressed file does not match "
                    f"{md5sums[name]} in {folder / 'MD5SUMS'}"
                )
            arrays[f"{key}_{split}"] = _parse_idx(path, raw, magic)
    return _checked(arrays, str(folder), source=str(folder.resolve()))


def _load_npz(path: Path) -> Mnist:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in NPZ_KEYS if key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz file ({err})") from None
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise DataError(f"{path}: missing array {missing[0]!r}; expected {', '.join(NPZ_KEYS)}")
    for key, array in arrays.items():
        if array.dtype != np.uint8:
            raise DataError(f"{path}: {key} has dtype {array.dtype}, expected uint8")
        if key.startswith("x") and array.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{path}: {key} has shape {array.shape}, expected (n, 28, 28)")
    return _checked(arrays, str(path), source=str(path.resolve()))


def _load_keras_download() -> Mnist:
    import keras  # only here: loading from files must not need TensorFlow

    try:
        train, test = keras.datasets.mnist.load_data()
    except Exception as err:  # the downloader raises many kinds; all mean "no data"
        raise DataError(f"keras.datasets.mnist.load_data() failed ({err}); {HOW_TO_POINT}") from None
    return _checked(dict(zip(NPZ_KEYS, (*train, *test))), KERAS_MNIST_URL, source=KERAS_MNIST_URL)


def _checked(arrays: dict[str, np.ndarray], where: str, source: str) -> Mnist:
    """The four arrays as an Mnist from ``source``, once each split's labels are checked
    (``where`` names them in the error)."""
    for split in IDX_FILES:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{where}: {split} has {len(x)} images but {len(y)} labels")
        if len(y) == 0:
            raise DataError(f"{where}: {split} split is empty")
        if y.max() >= NUM_CLASSES:
            raise DataError(f"{where}: {split} labels include {int(y.max())}, allowed 0-9")
    # the four arrays in a fixed order: IDX and npz copies of MNIST have one digest
    return Mnist(**arrays, source=source, digest=array_digest(*(arrays[key] for key in NPZ_KEYS)))


def array_digest(*arrays: np.ndarray) -> str:
    """Short md5 of the arrays' bytes, in the order given."""
    md5 = hashlib.md5()
    for array in arrays:
        md5.update(np.ascontiguousarray(array).tobytes())
    return md5.hexdigest()[:16]
