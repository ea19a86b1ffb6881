"""`verify`: re-train a registered version from what the registry and its training run
record (the parameters and the seed), on data with the recorded digest, and compare.

Refuses in one line, before any run, if the data differ. Says whether the code differs.
The re-training is a training run like any other, tagged ``verifies`` (model/version) and
linked from the version's ``verified`` tag. Validation and test accuracy must be equal on
the same machine with the same code, and within the variant's seed spread otherwise
(core/verification.py). A mismatch exits with status 1.
"""

import statistics

from mnist_pipeline import names
from mnist_pipeline.core import config, verification
from mnist_pipeline.core.commands import VerifyParams
from mnist_pipeline.core.errors import Mismatch, UserError
from mnist_pipeline.tracking import access, liveness, readback, registry, run_keys, run_lifecycle


def run(params: VerifyParams) -> None:
    # its runs are checked in the version's experiment, below
    data = run_lifecycle.preflight("verify", params.data_dir, checks_runs=False, ends_dead_runs=False)
    access.require_model_read(params.model_uri, "verify")
    version = registry.version_of(params.model_uri)
    trained = readback.training_run_of(version)
    recorded_digest = trained.data.tags.get(names.TAG_DATA_DIGEST, "")
    label = f"{version.name} version {version.version}"
    if data.digest != recorded_digest:
        raise UserError(
            f"data_dir: these images have digest {data.digest}, {label} was trained on {recorded_digest}: "
            "verify needs the same data"
        )
    cfg = config.logged_config(trained.data.params)
    code_now, code_then = run_keys.code_version(), trained.data.tags.get(names.TAG_CODE_VERSION, "")
    same_host = trained.data.tags.get(names.TAG_HOST) == liveness.tags()[names.TAG_HOST]
    # the re-training's run, and the version's `verified` tag: both refused before any training
    experiment_id = None if run_lifecycle.launched_by_mlflow_run() else trained.info.experiment_id
    access.require_runs("verify", experiment_id)
    access.require("verify", "tag versions of", "registered_model", version.name, access.REGISTER_NEEDS)
    liveness.end_dead_runs("verify", experiment_id)  # runs left RUNNING by a process killed hard
    print(f"verifying {label}: {cfg.variant}, seed {cfg.seed}, run {trained.info.run_id}")
    print(f"code: {'the same' if code_now == code_then else f'differs (recorded {code_then}, now {code_now})'}")
    print(f"machine: {'the same host' if same_host else 'another host'}")
    recorded_threads = trained.data.tags.get(names.TAG_THREADS, "")  # '': trained before runs recorded it
    on_threads = int(recorded_threads) if recorded_threads.isdigit() else 0
    print(f"threads: {on_threads}, as recorded" if on_threads else "threads: not recorded; this process's")
    from mnist_pipeline.tracking.training_dispatch import track_alone

    if not run_lifecycle.launched_by_mlflow_run():  # a run of its own, beside the version's
        run_lifecycle.use_experiment_of(trained.info.run_id, "training run", "the version's run is not in this store")
    tags = {names.TAG_VERIFIES: f"{version.name}/{version.version}"}
    run_id = track_alone(cfg, data, tags, on_threads, trained.info.experiment_id)
    exact = same_host and code_now == code_then
    matches, lines = verification.compare(trained.data.metrics, readback.metrics_of(run_id), exact, _spread(trained))
    print("\n".join(lines))
    registry.tag_version(version, names.TAG_VERIFIED, f"{'matches' if matches else 'DIFFERS'} by run {run_id}")
    if not matches:
        raise Mismatch(f"re-training {label} does not reproduce it (see the lines above)")


def _spread(trained) -> float | None:
    """The largest standard deviation of val or test accuracy over the seed runs of the
    version's configuration in the store; None with fewer than three (two seeds can agree by
    chance, and make a tolerance far tighter than the noise)."""
    seeds = readback.seed_runs(trained)
    if len(seeds) < 3:
        return None
    return max(statistics.stdev(r.data.metrics[name] for r in seeds) for name in ("val_accuracy", "test_accuracy"))
