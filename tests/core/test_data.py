import gzip
import hashlib

import numpy as np
import pytest

from helpers.data import idx_bytes, tiny_arrays, write_idx_folder
from mnist_pipeline.core import data
from mnist_pipeline.core.data import DataError


def test_gz_plain_and_npz_folders_load_the_same_content(tmp_path):
    arrays = tiny_arrays()
    gz = data.load(write_idx_folder(tmp_path / "gz", arrays, gz=True))
    plain = data.load(write_idx_folder(tmp_path / "plain", arrays, gz=False))
    (tmp_path / "npz").mkdir()
    np.savez(tmp_path / "npz" / data.NPZ_FILE, **arrays)
    npz = data.load(tmp_path / "npz")
    for loaded in (gz, plain, npz):
        for key, array in arrays.items():
            np.testing.assert_array_equal(getattr(loaded, key), array)
            assert getattr(loaded, key).dtype == np.uint8
    assert gz.digest == plain.digest == npz.digest


def test_environment_variable_is_the_fallback(tiny_mnist_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tiny_mnist_dir))
    assert data.load().source == str(tiny_mnist_dir.resolve())


def test_missing_folder_says_both_ways_to_the_data(tmp_path):
    """A folder, or none at all: Keras' download (a newcomer without a local copy)."""
    with pytest.raises(
        DataError, match=r"no such data folder; pass data_dir .* MNIST_DATA_DIR .* download MNIST with Keras"
    ):
        data.load(tmp_path / "nowhere")


def test_folder_without_data(tmp_path):
    with pytest.raises(DataError, match="holds neither"):
        data.load(tmp_path)


def _corrupt(tmp_path, name: str, raw: bytes, fix_md5: bool = True):
    """A tiny folder whose file ``name`` holds ``raw`` (MD5SUMS updated unless told not to)."""
    folder = write_idx_folder(tmp_path / "bad", tiny_arrays(), gz=True)
    (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
    if fix_md5:
        sums = folder / "MD5SUMS"
        lines = [line for line in sums.read_text().splitlines() if not line.endswith(name)]
        sums.write_text("\n".join(lines + [f"{hashlib.md5(raw).hexdigest()}  {name}"]) + "\n")
    return folder


IMAGES = "train-images-idx3-ubyte"
LABELS = "train-labels-idx1-ubyte"


@pytest.mark.parametrize(
    ("name", "make", "problem"),
    [
        (IMAGES, lambda a: idx_bytes(a["x_train"])[:-100], "truncated"),
        (IMAGES, lambda a: idx_bytes(a["x_train"])[:10], "truncated"),
        (IMAGES, lambda a: b"\x00\x00\x08\x01" + idx_bytes(a["x_train"])[4:], "wrong magic number"),
        (IMAGES, lambda a: idx_bytes(a["x_train"][:, :27, :27]), "27x27, expected 28x28"),
        (IMAGES, lambda a: idx_bytes(a["x_train"]) + b"\x00", "trailing bytes"),
        (LABELS, lambda a: idx_bytes(a["y_train"][:-1]), "400 images but 399 labels"),
        (LABELS, lambda a: idx_bytes(np.full_like(a["y_train"], 10)), "labels include 10"),
    ],
)
def test_bad_idx_files_name_the_file_and_the_problem(tmp_path, name, make, problem):
    folder = _corrupt(tmp_path, name, make(tiny_arrays()))
    with pytest.raises(DataError) as err:
        data.load(folder)
    message = str(err.value)
    assert problem in message and "\n" not in message
    assert name in message or str(folder) in message


def test_md5_mismatch(tmp_path):
    raw = idx_bytes(np.zeros((400,), np.uint8))
    folder = _corrupt(tmp_path, LABELS, raw, fix_md5=False)
    with pytest.raises(DataError, match=rf"{LABELS}.gz: MD5 {hashlib.md5(raw).hexdigest()} .* does not match"):
        data.load(folder)


def test_not_gzip(tmp_path):
    folder = write_idx_folder(tmp_path / "x", tiny_arrays())
    (folder / f"{LABELS}.gz").write_bytes(b"plain text, not gzip")
    with pytest.raises(DataError, match=f"{LABELS}.gz: cannot be read"):
        data.load(folder)


def test_missing_one_file(tmp_path):
    folder = write_idx_folder(tmp_path / "x", tiny_arrays())
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[.gz\]: missing"):
        data.load(folder)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda a: a.pop("y_test"), "missing array 'y_test'"),
        (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), "dtype float32, expected uint8"),
        (lambda a: a.update(x_test=a["x_test"][:, :20]), "expected (n, 28, 28)"),
    ],
)
def test_bad_npz(tmp_path, change, problem):
    arrays = tiny_arrays()
    change(arrays)
    np.savez(tmp_path / data.NPZ_FILE, **arrays)
    with pytest.raises(DataError) as err:
        data.load(tmp_path)
    assert problem in str(err.value)


def test_corrupt_npz(tmp_path):
    (tmp_path / data.NPZ_FILE).write_bytes(b"PK\x03\x04 not really a zip archive")
    with pytest.raises(DataError, match="not a readable .npz file"):
        data.load(tmp_path)


def test_validation_split_takes_the_last_fraction():
    x, y = np.arange(100).reshape(100, 1), np.arange(100)
    (x_fit, y_fit), (x_val, y_val) = data.split_validation(x, y, 0.1)
    assert len(x_fit) == 90 and list(y_val) == list(range(90, 100))


@pytest.mark.slow
def test_real_mnist_passes_every_check():
    from helpers.stores import REAL_MNIST

    mnist = data.load(REAL_MNIST)
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.x_test.shape == (10000, 28, 28)
    assert set(np.unique(mnist.y_train)) == set(range(10))
