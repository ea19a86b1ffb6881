"""`reproduce`: every variant at several seeds, and differences judged against seed noise."""

import json

import mlflow
import pandas as pd
import pytest

from helpers.stores import all_runs
from mnist_pipeline import cli, names
from mnist_pipeline.core import seeds


def results(**accuracies: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"variant": name, "seed": 42 + i, "test_accuracy": a}
            for name, values in accuracies.items()
            for i, a in enumerate(values)
        ]
    )


def test_seed_table_summarises_each_variant_beside_the_study():
    table = seeds.seed_table(results(a=[0.96, 0.97, 0.98], b=[0.99, 0.99]), {"a": 0.975, "b": 0.95})
    a, b = table.set_index("variant").loc["a"], table.set_index("variant").loc["b"]
    assert (a["seeds"], a["mean"], a["min"], a["max"]) == (3, pytest.approx(0.97), 0.96, 0.98)
    assert a["std"] == pytest.approx(0.01)  # sample std (ddof 1)
    assert a["study_within_min_max"] and not b["study_within_min_max"]
    assert b["study_minus_mean"] == pytest.approx(-0.04)


def test_a_difference_counts_only_when_larger_than_seed_noise():
    separated = seeds.pairwise(results(a=[0.970, 0.971, 0.969], b=[0.980, 0.981, 0.979])).iloc[0]
    assert separated["mean_a_minus_b"] == pytest.approx(-0.01)
    assert separated["p_value"] < 1e-3 and separated["larger_than_seed_noise"]
    overlapping = seeds.pairwise(results(a=[0.970, 0.980, 0.975], b=[0.971, 0.979, 0.976])).iloc[0]
    assert overlapping["p_value"] > 0.5 and not overlapping["larger_than_seed_noise"]
    constant = seeds.pairwise(results(a=[0.97, 0.97], b=[0.97, 0.97], c=[0.98, 0.98]))
    assert list(constant["larger_than_seed_noise"]) == [False, True, True]


def test_reproduce_trains_each_variant_per_seed_and_logs_the_table(tracking_store, tiny_mnist_dir, capfd):
    argv = ["reproduce", "--variants", "baseline,final", "--seeds", "2", "--seed", "7", "--epochs", "1"]
    argv += ["--batch-size", "64", "--data-dir", str(tiny_mnist_dir)]
    argv += [
        "--workers",
        "1",
    ]  # in this process, for the suite's time (side by side: tests/tracking/test_training_dispatch.py)
    assert cli.run(argv) == 0
    out = capfd.readouterr().out.splitlines()
    for label in ("baseline seed 7", "baseline seed 8", "final seed 7", "final seed 8"):  # a variant repeats
        assert [line.split("  ")[0] for line in out if "  epoch 1/1  loss " in line].count(label) == 1, out
    runs = all_runs(tracking_store)
    assert {r.info.status for r in runs} == {"FINISHED"}
    [parent] = [r for r in runs if r.data.tags.get(names.TAG_ROLE) == "reproduce"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((r.data.tags["variant"], r.data.params["seed"]) for r in children) == [
        ("baseline", "7"),
        ("baseline", "8"),
        ("final", "7"),
        ("final", "8"),
    ]
    seed_runs = json.loads(parent.data.tags[names.TAG_SEED_RUNS])
    assert sorted(seed_runs) == ["baseline", "final"] and sum(map(len, seed_runs.values())) == 4
    for variant, ids in seed_runs.items():  # the parent's figures come from its children
        accuracy = [mlflow.get_run(i).data.metrics["test_accuracy"] for i in ids]
        assert parent.data.metrics[f"test_accuracy_mean.{variant}"] == pytest.approx(sum(accuracy) / 2)
        assert parent.data.metrics[f"test_accuracy_min.{variant}"] == min(accuracy)
    paths = {f.path for f in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "reproduce")}
    assert {names.REPRODUCE_TABLE, names.REPRODUCE_PAIRS, names.REPRODUCE_MD, names.REPRODUCE_PLOT} <= paths
    pairs = pd.read_csv(
        mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path=names.REPRODUCE_PAIRS)
    )
    assert list(pairs[["a", "b"]].itertuples(index=False, name=None)) == [("baseline", "final")]

    assert cli.run(argv) == 0  # again: the four seed runs are reused, not trained
    assert len(all_runs(tracking_store)) == len(runs) + 1
