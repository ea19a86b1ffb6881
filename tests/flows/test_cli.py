"""The command line: validation at the edge, before any MLflow run exists."""

import dataclasses
import re
import subprocess
import sys

import pytest
import yaml

import benchmarks
from helpers.stores import PROJECT_ROOT, all_runs
from mnist_pipeline import cli
from mnist_pipeline.core.commands import COMMANDS
from mnist_pipeline.core.config import OVERRIDABLE
from mnist_pipeline.core.roles import ADMIN_COMMANDS

# Every entry point parameter, out of range and of the wrong type.
BAD_INPUT = [
    (["train", "--variant", "huge"], "variant='huge' is not allowed: must be one of baseline, regularized, final"),
    (["train", "--variant", ""], "variant='' is not allowed"),
    (["main", "--variants", "baseline,huge"], "variants='huge' is not allowed"),
    (["main", "--variants", "final,final"], "a variant appears twice"),
    (["main", "--variants", ","], "variants=',' is not allowed"),
    (["main", "--force", "perhaps"], "force='perhaps' is not allowed: must be true or false"),
    (["main", "--model-name", "a/b"], "model_name='a/b' is not allowed: a registered model name"),
    (["main", "--model-name", " spaced "], "model_name=' spaced ' is not allowed"),
    (["register", "--model-name", ""], "model_name='' is not allowed"),
    (["register", "--model-name", "x:y"], "model_name='x:y' is not allowed"),
    (["train", "--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist: no such data folder"),
    (["train", "--hidden-units", "512;256"], "hidden_units='512;256' is not allowed"),
    (["train", "--hidden-units", "512,0"], "hidden_units=512,0 is not allowed: must be one or more positive integers"),
    (["train", "--hidden-units", "wide"], "hidden_units='wide' is not allowed"),
    (["train", "--dropout", "1.0"], "dropout=1.0 is not allowed: must be a number in [0, 1)"),
    (["train", "--dropout", "-0.1"], "dropout=-0.1 is not allowed"),
    (["train", "--dropout", "half"], "dropout='half' is not allowed: must be a number in [0, 1)"),
    (["train", "--dropout", "nan"], "dropout=nan is not allowed"),
    (["train", "--l2=-1e-3"], "l2=-0.001 is not allowed: must be a number >= 0"),
    (["train", "--l2", "inf"], "l2=inf is not allowed"),
    (["train", "--l2", "some"], "l2='some' is not allowed"),
    (["train", "--epochs", "0"], "epochs=0 is not allowed: must be an integer >= 1"),
    (["train", "--epochs", "-2"], "epochs=-2 is not allowed"),
    (["train", "--epochs", "1.5"], "epochs='1.5' is not allowed: must be an integer >= 1"),
    (["train", "--batch-size", "0"], "batch_size=0 is not allowed: must be an integer >= 1"),
    (["train", "--batch-size", "big"], "batch_size='big' is not allowed"),
    (["train", "--learning-rate", "0"], "learning_rate=0.0 is not allowed: must be a number > 0"),
    (["train", "--learning-rate", "fast"], "learning_rate='fast' is not allowed"),
    (["train", "--validation-split", "1"], "validation_split=1.0 is not allowed: must be a number in (0, 1)"),
    (["train", "--validation-split", "0"], "validation_split=0.0 is not allowed"),
    (["train", "--validation-split", "tenth"], "validation_split='tenth' is not allowed"),
    (["train", "--seed", "-1"], "seed=-1 is not allowed: must be an integer in [0, 2**32)"),
    (["train", "--seed", str(2**32)], f"seed={2**32} is not allowed"),
    (["train", "--seed", "lucky"], "seed='lucky' is not allowed"),
    (["main", "--fused-rmsprop", "maybe"], "fused_rmsprop='maybe' is not allowed: must be true or false"),
    (["main", "--epochs", "0"], "epochs=0 is not allowed"),
    (["evaluate", "--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist: no such data folder"),
    (["serve", "--port", "0"], "port='0' is not allowed: must be an integer in 1-65535"),
    (["serve", "--port", "http"], "port='http' is not allowed"),
    (["serve", "--max-request-mb", "0"], "max_request_mb='0' is not allowed: must be a number > 0"),
    (["serve", "--max-request-mb", "lots"], "max_request_mb='lots' is not allowed"),
    (
        ["serve", "--model-uri", "models:/no-such-model@champion"],
        "model_uri='models:/no-such-model@champion' cannot be loaded",
    ),
    (["sweep", "--study-name", "a b"], "study_name='a b' is not allowed: 1-100 letters, digits, '.', '_' or '-'"),
    (["sweep", "--n-trials", "0"], "n_trials='0' is not allowed: must be an integer >= 1"),
    (["main", "--workers", "-1"], "workers='-1' is not allowed: must be an integer >= 0"),
    (["reproduce", "--workers", "two"], "workers='two' is not allowed: must be an integer >= 0"),
    (["reproduce", "--seeds", "1"], "seeds='1' is not allowed: must be an integer >= 2"),
    (["reproduce", "--seeds", "five"], "seeds='five' is not allowed"),
    (["reproduce", "--variants", "base"], "variants='base' is not allowed"),
    (["reproduce", "--seed", str(2**32 - 2)], f"seed={2**32 - 2} with seeds=5 is not allowed: the last seed"),
    (["reproduce", "--dropout", "2"], "dropout=2.0 is not allowed"),
    (["train", "--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["fly"], "invalid choice: 'fly'"),
]
TAKES_DATA = {"train", "main", "reproduce", "evaluate"}


@pytest.mark.parametrize(("argv", "expected"), BAD_INPUT)
def test_bad_input_exits_2_with_one_line_and_no_run(
    argv, expected, tracking_store, tiny_mnist_dir, capsys, monkeypatch
):
    if argv[0] in TAKES_DATA and "--data-dir" not in argv:
        argv = [*argv, "--data-dir", str(tiny_mnist_dir)]
    monkeypatch.chdir(PROJECT_ROOT)  # README.md: an existing file
    with pytest.raises(SystemExit) as exit_:
        sys.exit(cli.run(argv))
    assert exit_.value.code == cli.USAGE_ERROR
    # a model lookup creates the empty store first, and MLflow logs that; the rest is ours
    lines = [line for line in capsys.readouterr().err.splitlines() if " INFO mlflow.store.db" not in line]
    assert len(lines) == 1 and lines[0].startswith("mnist-pipeline: error: "), lines
    assert expected in lines[0]
    assert all_runs(tracking_store) == []


def test_split_that_leaves_no_training_images_is_refused_before_a_run(tracking_store, tmp_path, capsys):
    from helpers.data import tiny_arrays, write_idx_folder

    arrays = tiny_arrays(n_train=1, n_test=5)
    folder = write_idx_folder(tmp_path / "one", arrays)
    assert cli.run(["train", "--data-dir", str(folder)]) == cli.USAGE_ERROR
    assert "leaves no training images" in capsys.readouterr().err
    assert all_runs(tracking_store) == []


def listed_commands(help_text: str) -> list[str]:
    """The sub-commands argparse lists in ``--help`` ("{train,main,...}")."""
    return re.search(r"\{([a-z,]+)\}", help_text).group(1).split(",")


@pytest.mark.parametrize(
    ("argv", "starts"),
    [
        (["main", "--workers", "2"], True),
        (["reproduce", "--variants", "baseline", "--seeds", "2", "--workers", "2"], True),
        (["main", "--workers", "1"], False),  # one process: this one trains
        (["main", "--variants", "final", "--workers", "2"], False),  # one training
        (["train", "--variant", "final"], False),
    ],
)
def test_the_workers_fork_server_starts_before_the_command_s_code_only_for_trainings_side_by_side(
    argv, starts, monkeypatch, tracking_store
):
    """Side by side (main, reproduce on more than one process), the fork server starts as soon as
    the parameters are read, before the command's own imports; otherwise never."""
    events = []
    monkeypatch.setattr(cli.worker_context, "start", lambda: events.append("fork server"))
    imported = cli.importlib.import_module

    def import_module(name, *package):
        if name.startswith("mnist_pipeline.flows"):
            events.append(name)
        return imported(name, *package)

    monkeypatch.setattr(cli.importlib, "import_module", import_module)
    status = cli.run([*argv, "--data-dir", "/nonexistent/mnist"])  # refused at the data check: no training
    assert status == cli.USAGE_ERROR
    expected = ["fork server", f"mnist_pipeline.flows.{argv[0]}"] if starts else [f"mnist_pipeline.flows.{argv[0]}"]
    assert events == expected


def test_console_script_and_module_expose_the_same_commands():
    helps = [
        subprocess.run(command, capture_output=True, text=True, check=True).stdout
        for command in ([sys.executable, "-m", "mnist_pipeline", "--help"], ["mnist-pipeline", "--help"])
    ]
    assert listed_commands(helps[0]) == listed_commands(helps[1]) == list(COMMANDS) + list(ADMIN_COMMANDS)


@pytest.mark.parametrize("command", [*COMMANDS, *ADMIN_COMMANDS])
def test_every_command_s_help_prints_each_parameter_s_help_whole(command, capsys):
    """argparse reads a help text as a %-format: a literal '%' (promote's "95% lower bound") must reach the screen."""
    parser = cli.build_parser()
    with pytest.raises(SystemExit) as done:
        parser.parse_args([command, "--help"])
    assert done.value.code == 0
    out = "".join(capsys.readouterr().out.split())  # argparse wraps lines, hyphens too
    for f in dataclasses.fields(cli.ALL_COMMANDS[command]):
        assert "".join(f.metadata["help"].split()) in out, f.name


# MLproject's entry points: the package's commands, and the benchmark's (from the project folder)
ENTRY_POINTS = COMMANDS | benchmarks.COMMANDS


def _module_and_parser(entry: str):
    """The module `python -m` runs for ``entry``, and its command line."""
    return (
        ("benchmarks", benchmarks.parser()) if entry in benchmarks.COMMANDS else ("mnist_pipeline", cli.build_parser())
    )


def test_mlproject_parameters_and_defaults_match_the_command_dataclasses():
    """Every MLproject entry point has a dataclass; its parameters are the dataclass's fields
    (the positional files of `predict` aside) with the same defaults, and the parser built
    from the dataclass gives those defaults."""
    project = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
    assert project["conda_env"] == "conda.yaml" and (PROJECT_ROOT / "conda.yaml").is_file()
    assert set(project["entry_points"]) <= set(ENTRY_POINTS)
    for entry, spec in project["entry_points"].items():
        params, defaults = spec["parameters"], ENTRY_POINTS[entry].defaults()
        if entry in ("main", "train", "reproduce"):
            assert set(OVERRIDABLE) | {"data_dir"} <= set(params), entry
        assert set(params) == set(defaults), entry
        for name, param in params.items():
            assert str(param["default"]) == defaults[name], (entry, name)
            assert f"--{name.replace('_', '-')} {{{name}}}" in spec["command"], (entry, name)
        assert set(re.findall(r"{(\w+)}", spec["command"])) == set(params), entry  # nothing undeclared
        args = vars(_module_and_parser(entry)[1].parse_args([entry]))
        for name in params:
            assert args[name] == defaults[name], (entry, name)
        del args["command"], args["params"]
        assert ENTRY_POINTS[entry].from_strings(args) == ENTRY_POINTS[entry]()  # the defaults are valid


def test_each_entry_point_command_as_mlflow_builds_it_parses():
    """The command `mlflow run -e <entry>` runs with every default is one our CLI accepts."""
    import shlex

    from mlflow.projects import _project_spec

    project = _project_spec.load_project(str(PROJECT_ROOT))
    for entry in yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())["entry_points"]:
        argv = shlex.split(project.get_entry_point(entry).compute_command({}, None))
        module, parser = _module_and_parser(entry)
        assert argv[:3] == ["python", "-m", module], entry
        assert parser.parse_args(argv[3:]).command == entry


def test_unreachable_tracking_server_fails_fast_naming_the_uri(tiny_mnist_dir, tmp_path):
    """Bounded retries: the command ends with one line, before any training starts."""
    import os
    import time

    from helpers.servers import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "mnist_pipeline", "train", "--data-dir", str(tiny_mnist_dir)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(f"failed after {time.monotonic() - start:.1f} s")  # measured, reported, not asserted
    assert result.returncode == cli.USAGE_ERROR
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"mnist-pipeline: error: tracking server {uri} cannot be reached")
    assert "Max retries exceeded" in last
    assert "epoch 1/" not in result.stdout


def test_http_settings_parse_as_mlflow_reads_them(monkeypatch):
    import mlflow.environment_variables as variables

    for name, value in {**cli.HTTP_RETRIES, **cli.SYSTEM_METRICS}.items():
        monkeypatch.setenv(name, value)
        assert getattr(variables, name).get() is not None, name  # raises if MLflow cannot parse it


@pytest.mark.parametrize("value", ["soon", "-1", "inf"])
def test_a_bad_retry_interval_is_refused_before_a_run(tracking_store, tiny_mnist_dir, monkeypatch, capsys, value):
    monkeypatch.setenv("MNIST_PIPELINE_RETRY_SECONDS", value)
    assert cli.run(["train", "--data-dir", str(tiny_mnist_dir), "--epochs", "1"]) == cli.USAGE_ERROR
    [line] = capsys.readouterr().err.strip().splitlines()
    allowed = "is not allowed: must be a number of seconds >= 0"
    assert line == f"mnist-pipeline: error: MNIST_PIPELINE_RETRY_SECONDS={value!r} {allowed}"
    assert all_runs(tracking_store) == []
