"""The command line: validation at the edge, before any MLflow run exists."""

import subprocess
import sys

import pytest
import yaml

from conftest import PROJECT_ROOT, all_runs
from mnist_pipeline import cli
from mnist_pipeline.config import OVERRIDABLE


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--variant", "huge"], "variant='huge' is not allowed: must be one of baseline, regularized, final"),
        (["train", "--epochs", "0"], "epochs=0 is not allowed: must be an integer >= 1"),
        (["train", "--epochs", "-2"], "epochs=-2 is not allowed"),
        (["train", "--dropout", "1.0"], "dropout=1.0 is not allowed: must be a number in [0, 1)"),
        (["train", "--validation-split", "1"], "validation_split=1.0 is not allowed: must be a number in (0, 1)"),
        (["train", "--hidden-units", "512;256"], "hidden_units='512;256' is not allowed"),
        (["main", "--variants", "baseline,huge"], "variants='huge' is not allowed"),
        (["main", "--force", "perhaps"], "force='perhaps' is not allowed: must be true or false"),
        (["train", "--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist: no such data folder"),
        (["train", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_run(argv, expected, tracking_store, tiny_mnist_dir, capsys):
    if "--data-dir" not in argv:
        argv = [*argv, "--data-dir", str(tiny_mnist_dir)]
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.run(argv))
    assert exit_.value.code == cli.USAGE_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mnist-pipeline: error: ")
    assert expected in err
    assert all_runs(tracking_store) == []


def test_split_that_leaves_no_training_images_is_refused_before_a_run(tracking_store, tmp_path, capsys):
    from conftest import tiny_arrays, write_idx_folder

    arrays = tiny_arrays(n_train=1, n_test=5)
    folder = write_idx_folder(tmp_path / "one", arrays)
    assert cli.run(["train", "--data-dir", str(folder)]) == cli.USAGE_ERROR
    assert "leaves no training images" in capsys.readouterr().err
    assert all_runs(tracking_store) == []


def test_console_script_and_module_expose_the_same_commands():
    for command in ([sys.executable, "-m", "mnist_pipeline", "--help"], ["mnist-pipeline", "--help"]):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        assert "train" in out and "main" in out


def test_mlproject_defaults_and_flags_match_the_cli():
    project = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
    assert project["conda_env"] == "conda.yaml" and (PROJECT_ROOT / "conda.yaml").is_file()
    parser = cli.build_parser()
    for entry, spec in project["entry_points"].items():
        params = spec["parameters"]
        if entry in ("main", "train"):
            assert set(OVERRIDABLE) | {"data_dir"} <= set(params), entry
        for name, param in params.items():
            assert str(param["default"]) == cli.DEFAULTS[name], (entry, name)
            assert f"--{name.replace('_', '-')} {{{name}}}" in spec["command"], (entry, name)
        args = parser.parse_args([entry])
        for name in params:
            assert getattr(args, name) == cli.DEFAULTS[name], (entry, name)


def test_unreachable_tracking_server_fails_fast_naming_the_uri(tiny_mnist_dir, tmp_path):
    """Bounded retries: the command ends with one line, before any training starts."""
    import os
    import time

    from servers import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mnist_pipeline", "train", "--data-dir", str(tiny_mnist_dir)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    print(f"failed after {time.monotonic() - start:.1f} s")  # measured, reported, not asserted
    assert result.returncode == cli.USAGE_ERROR
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mnist-pipeline: error: tracking server {uri} cannot be reached")
    assert "Max retries exceeded" in last
    assert "Epoch 1" not in result.stdout


def test_http_settings_parse_as_mlflow_reads_them(monkeypatch):
    import mlflow.environment_variables as variables

    from mnist_pipeline import store

    for name, value in {**store.HTTP_SETTINGS, **store.CHECK_SETTINGS}.items():
        monkeypatch.setenv(name, value)
        assert getattr(variables, name).get() is not None, name  # raises if MLflow cannot parse it
