"""code_version: the digest that decides run reuse covers every source file, by relative path."""

import shutil
from pathlib import Path

from mnist_pipeline.tracking.run_keys import PACKAGE, code_version


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "mnist_pipeline"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_the_digest_is_the_package_s_whatever_folder_it_lies_in(tmp_path):
    assert code_version(_copy(tmp_path)) == code_version()


def test_a_change_in_any_subfolder_changes_the_digest(tmp_path):
    before = code_version(_copy(tmp_path))
    for changed in ("core/models.py", "tracking/track_training.py", "flows/main.py", "names.py"):
        copy = _copy(tmp_path / changed.replace("/", "-"))
        with (copy / changed).open("a") as f:
            f.write("\n# changed\n")
        assert code_version(copy) != before, changed


def test_a_file_moved_to_another_folder_changes_the_digest(tmp_path):
    copy = _copy(tmp_path)
    before = code_version(copy)
    moved = _copy(tmp_path / "moved")
    (moved / "core/seeds.py").rename(moved / "tracking/seeds.py")
    assert code_version(moved) != before
