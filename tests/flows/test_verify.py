"""`verify`: a registered version re-trained from what the registry records."""

import dataclasses
import os

import mlflow

from helpers.data import tiny_arrays, write_idx_folder
from helpers.stores import all_runs
from mnist_pipeline import cli, names


def test_verify_finds_the_champion_equal_refuses_other_data_and_catches_a_difference(
    tracking_store, tiny_mnist_dir, tmp_path, capfd
):
    # two trainings side by side, on one thread each: the champion is re-trained on one too
    common = ["--variants", "baseline,final", "--epochs", "1", "--batch-size", "64", "--data-dir", str(tiny_mnist_dir)]
    assert cli.run(["main", *common, "--workers", "2"]) == 0
    client = mlflow.MlflowClient()
    trained = client.get_model_version(names.MODEL_NAME, "1").tags["run_id"]
    variant = mlflow.get_run(trained).data.tags[names.TAG_VARIANT]
    assert mlflow.get_run(trained).data.tags[names.TAG_THREADS] == "1"
    capfd.readouterr()

    # the same machine and code: equal
    assert cli.run(["verify", "--data-dir", str(tiny_mnist_dir)]) == 0
    out = capfd.readouterr().out.splitlines()
    assert f"verifying mnist-digits version 1: {variant}, seed 42, run {trained}" in out
    assert "code: the same" in out and "machine: the same host" in out and "threads: 1, as recorded" in out
    metrics = mlflow.get_run(trained).data.metrics
    for name in ("val_accuracy", "test_accuracy"):
        value = f"{metrics[name]:.4f}"
        assert f"{name}: recorded {value}, re-trained {value} (+0.00 pp, must be equal): matches" in out
    [again] = [r for r in all_runs(tracking_store) if r.data.tags.get(names.TAG_VERIFIES) == "mnist-digits/1"]
    assert again.info.status == "FINISHED" and again.data.params["seed"] == "42"
    assert again.data.tags[names.TAG_THREADS] == "1" and again.data.tags[names.TAG_PID] != str(os.getpid())
    assert client.get_model_version(names.MODEL_NAME, "1").tags[names.TAG_VERIFIED] == (
        f"matches by run {again.info.run_id}"
    )

    # other data: one line, exit 2, no run
    other = write_idx_folder(tmp_path / "other", tiny_arrays(n_train=300))
    before = len(all_runs(tracking_store))
    assert cli.run(["verify", "--data-dir", str(other)]) == cli.USAGE_ERROR
    [line] = capfd.readouterr().err.strip().splitlines()
    assert line.startswith("mnist-pipeline: error: data_dir: these images have digest ")
    assert "mnist-digits version 1 was trained on" in line and line.endswith("verify needs the same data")
    assert len(all_runs(tracking_store)) == before

    # a record the re-training does not reproduce: exit 1
    client.log_metric(trained, "test_accuracy", metrics["test_accuracy"] - 0.05)
    assert cli.run(["verify", "--model-uri", "models:/mnist-digits/1", "--data-dir", str(tiny_mnist_dir)]) == 1
    captured = capfd.readouterr()
    assert "(+5.00 pp, must be equal): DIFFERS" in captured.out
    assert captured.err.strip().splitlines()[-1] == (
        "mnist-pipeline: mismatch: re-training mnist-digits version 1 does not reproduce it (see the lines above)"
    )
    assert client.get_model_version(names.MODEL_NAME, "1").tags[names.TAG_VERIFIED].startswith("DIFFERS by run ")


def test_a_run_is_trained_again_as_it_was_logged():
    """Its params decide, the variant's fields included: a convnet logged before its images
    were turned and zoomed (no augment_rotation, augment_zoom params), with Dropout 0.5, is
    trained again with shifts alone and that Dropout (the shifts now by the loop's map: with
    other code, verify compares within the seed spread); one logged before its rate decayed
    (no cosine_decay param) is trained again at a constant rate."""
    from mnist_pipeline.core.config import logged_config, resolve

    logged = {name: str(value) for name, value in resolve("convnet").as_params().items()}
    assert logged_config(logged) == resolve("convnet")
    del logged["augment_rotation"], logged["augment_zoom"]
    logged["dropout"] = "0.5"
    shifts_only = dataclasses.replace(resolve("convnet"), augment_rotation=0.0, augment_zoom=0.0, dropout=0.5)
    assert logged_config(logged) == shifts_only
    del logged["cosine_decay"]
    assert logged_config(logged) == dataclasses.replace(shifts_only, cosine_decay=False)


def test_verify_reproduces_a_convnet_version_exactly(tracking_store, tiny_mnist_dir, capfd):
    """A convnet's random rotations, zooms and shifts (drawn from each step's seed), its
    Dropout and its decaying rate come back the same: its version re-trains to equal scores."""
    data = ["--data-dir", str(tiny_mnist_dir)]
    small = ["--conv-filters", "4,8", "--hidden-units", "16", "--epochs", "2", "--batch-size", "64"]
    assert cli.run(["main", "--variants", "convnet", *small, "--workers", "1", *data]) == 0
    capfd.readouterr()
    assert cli.run(["verify", *data]) == 0
    out = capfd.readouterr().out
    assert "verifying mnist-digits version 1: convnet, seed 42" in out and "code: the same" in out
    assert out.count("(+0.00 pp, must be equal): matches") == 2
