"""`promote` on a SQLite store: two versions (champion, challenger), serving runs written by the
server's own writer (tracking/serving_runs.py) from windows made by hand, and the command's
decision: each live gate refuses in its turn, a better challenger takes the alias, and every
decision is a printed line, a version tag and a row of registry/decisions.csv."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from mnist_pipeline import cli, names
from mnist_pipeline.core import live
from mnist_pipeline.tracking import serving_runs

MODEL = "digits"


@pytest.fixture
def pair(tracking_store):
    """Versions 1 (champion) and 2 (challenger, passed by the offline gates with require_shadow)."""
    client = mlflow.MlflowClient()
    client.create_registered_model(MODEL)
    for n in (1, 2):
        client.create_model_version(MODEL, f"file:///nowhere/{n}")
    client.set_model_version_tag(MODEL, "2", names.TAG_OFFLINE_GATE, "require_shadow")
    client.set_registered_model_alias(MODEL, names.CHAMPION, "1")
    client.set_registered_model_alias(MODEL, names.CHALLENGER, "2")
    return "1", "2"


def served(both=0, only_champion=0, only_challenger=0, neither=0, unlabelled=0, seconds=(0.002, 0.002), errors=0):
    """A window of one request of that many images, each labelled but the ``unlabelled`` ones:
    who classed each right (the true digit is 0), and each model's compute seconds."""
    champion = [0] * both + [0] * only_champion + [1] * only_challenger + [1] * neither + [3] * unlabelled
    challenger = [0] * both + [1] * only_champion + [0] * only_challenger + [2] * neither + [3] * unlabelled
    window = live.Window()
    classes = window.answer(np.eye(10)[champion], seconds[0])
    theirs = window.shadow(classes, np.eye(10)[challenger], seconds[1])
    labelled = len(champion) - unlabelled
    window.label(np.zeros(labelled, int), classes[:labelled], theirs[:labelled])
    window.errors += errors
    return window


def serve(versions, *windows):
    """Each window sent by a serving run of ``versions``, as serve sends them (one run per call)."""
    runs = serving_runs.ServingRuns(MODEL, f"{MODEL}-serving", lambda: versions, 1.0, 60.0)
    for number, window in enumerate(windows, start=1):
        runs.on_window(number, window)
    runs.close()


def promote(capsys, *args):
    status = cli.run(["promote", "--model-name", MODEL, *args])
    captured = capsys.readouterr()
    return status, captured.out.strip().splitlines()[-1] if captured.out.strip() else captured.err.strip()


def aliases():
    held = mlflow.MlflowClient().get_registered_model(MODEL).aliases
    return str(held[names.CHAMPION]), str(held[names.CHALLENGER])


def decision_row() -> dict:
    [run] = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.role = '{names.ROLE_PROMOTE}'", output_format="list"
    )
    assert run.info.status == "FINISHED" and run.info.run_name == "promote"
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=names.DECISIONS)
    [row] = pd.read_csv(path).to_dict("records")
    assert run.data.tags[names.TAG_CHAMPION_DECISION] == row["reason"]
    return row


def test_a_challenger_as_good_on_enough_labels_takes_the_alias(pair, capsys):
    # 5000 labelled images, the challenger right on 10 more: +0.20 pp; served in two runs (a restart)
    serve(pair, served(both=2400, only_champion=5, only_challenger=10, neither=85))
    serve(pair, served(both=2400, only_champion=5, only_challenger=10, neither=85, unlabelled=500))
    status, line = promote(capsys)
    assert status == 0 and aliases() == ("2", "2")
    assert line.startswith(f"{MODEL} version 2: version 2 shadowing version 1: 5500 images, 0 errors")
    assert "5000 labelled (90.9%): accuracy +0.20 pp" in line and "takes the champion alias" in line
    assert line.endswith(f"(2 serving runs in experiment '{MODEL}-serving')")
    tag = mlflow.MlflowClient().get_model_version(MODEL, "2").tags[names.TAG_PROMOTE_DECISION]
    row = decision_row()
    assert tag == row["reason"] and line.startswith(f"{MODEL} version 2: {tag}")
    assert (row["promoted"], row["gate"], row["holds_champion"], row["champion_before"]) == (True, "passed", True, 1)
    assert (row["shadowed_images"], row["labelled_images"], row["only_challenger_right"]) == (5500, 5000, 20)
    assert len(row["serving_runs"].split()) == 2


@pytest.mark.parametrize(
    "window, args, gate",
    [
        (served(both=999), ["--min-labelled-images", "0"], "min_shadow_images"),
        (served(both=5000, errors=1), [], "challenger_errors"),
        (served(both=5000, seconds=(0.002, 0.004)), [], "max_latency_ratio"),  # p99 x2
        (served(both=990, unlabelled=4000), [], "min_labelled_images"),
        (served(both=4900, only_champion=40, only_challenger=10, neither=50), [], "max_accuracy_drop"),  # -0.6 pp
        (served(both=980, only_champion=10, only_challenger=10), [], "max_accuracy_drop"),  # equal; 1000 labels
    ],
)
def test_each_live_gate_refuses_and_champion_stays(pair, capsys, window, args, gate):
    serve(pair, window)
    status, line = promote(capsys, *args)
    assert status == 0 and aliases() == ("1", "2")
    assert f"{MODEL} version 2: refused by {gate}: " in line
    row = decision_row()
    assert (row["promoted"], row["gate"], row["holds_champion"]) == (False, gate, False)


def test_a_version_the_offline_gates_refused_is_never_promoted(pair, capsys):
    mlflow.MlflowClient().set_model_version_tag(MODEL, "2", names.TAG_OFFLINE_GATE, "min_improvement")
    serve(pair, served(both=5000, only_challenger=100))
    status, line = promote(capsys)
    assert status == 0 and aliases() == ("1", "2")
    assert "refused by offline: " in line and line.endswith(
        "the offline gates did not pass it (min_improvement) (1 serving runs in experiment 'digits-serving')"
    )


def test_only_the_serving_runs_of_this_pair_count(pair, capsys):
    serve(("1", None), served(both=5000))  # the champion alone
    serve(("2", "1"), served(both=5000))  # the other way round
    status, line = promote(capsys, "--min-labelled-images", "0")
    assert "refused by min_shadow_images: version 2 shadowing version 1: 0 images" in line
    assert line.endswith("(0 serving runs in experiment 'digits-serving')")


@pytest.mark.parametrize(
    "champion, challenger, said",
    [("1", "1", "champion is version 1, challenger is 1"), (None, "2", "no version holds champion, challenger is 2")],
)
def test_nothing_to_promote_is_one_line_and_no_run(pair, capsys, champion, challenger, said):
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(MODEL, names.CHALLENGER, challenger)
    if champion is None:
        client.delete_registered_model_alias(MODEL, names.CHAMPION)
    status, line = promote(capsys)
    assert status == cli.USAGE_ERROR and line == f"mnist-pipeline: error: {MODEL}: nothing to promote ({said})"
    assert mlflow.search_runs(search_all_experiments=True, output_format="list") == []
