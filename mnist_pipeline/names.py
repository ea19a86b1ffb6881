"""The interface: every tag key, metric name, artifact path and alias the pipeline writes.

They are the same for every variant, so the MLflow UI's compare view lines runs up, and a
consumer (or a later run reusing this one) can rely on them. This module imports nothing.
"""

# Per-epoch metrics of a training run (step = epoch, from 1), in this order.
EPOCH_SECONDS = "epoch_seconds"  # wall time of the epoch, its validation pass included
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", EPOCH_SECONDS)
TRACKING_SECONDS = "tracking_seconds"  # time per-epoch logging took inside training
# Summary metrics of a training run, logged once after training.
SUMMARY_METRICS = (
    "best_val_accuracy",
    "best_epoch",
    "test_accuracy",
    "test_loss",
    "train_seconds",
    "samples_per_second",
    TRACKING_SECONDS,
)
# Those about one split, logged with it (and the logged model): MLflow 3's model view names their data.
DATASET_METRICS = {"test": ("test_accuracy", "test_loss"), "validation": ("best_val_accuracy",)}
NUM_PARAMETERS = "num_parameters"  # param: the network's weights, logged after training

# Artifacts of a training run.
CURVES = "plots/learning_curves.png"
CONFUSION = "plots/confusion_matrix.png"
MISCLASSIFIED = "plots/misclassified.png"
HISTORY = "tables/history.csv"  # one row per epoch, epochs numbered from 1
PER_CLASS = "tables/per_class.csv"  # precision, recall, f1 and support per digit
VAL_PER_CLASS = "tables/val_per_class.csv"  # the same on the validation split, last epoch's weights
# Summary metrics per digit on the validation split (last epoch): what promotion gates read.
VAL_RECALL, VAL_PRECISION = "val_recall_{digit}", "val_precision_{digit}"
# Test-set counts: one row per true digit, one column per predicted digit (predicted_0..9).
CONFUSION_COUNTS = "tables/confusion.csv"
PHASES = "timings/phases.json"  # wall seconds of each phase of the run (docs/speed.md)
MODEL = "model"  # name of the logged Keras model (MLflow 3: models:/<model_id>)
# Dataset inputs of a training run: context -> dataset name.
DATASETS = {"training": "mnist-train", "validation": "mnist-validation", "test": "mnist-test"}

# Artifacts of a `main` run.
COMPARISON_CSV = "comparison/comparison.csv"
COMPARISON_MD = "comparison/comparison.md"
OVERLAY = "comparison/validation_curves.png"
# Artifacts and metrics of a `reproduce` run.
REPRODUCE_RUNS = "reproduce/runs.csv"  # one row per variant and seed
REPRODUCE_TABLE = "reproduce/seed_table.csv"  # per variant: mean, std, min, max, study
REPRODUCE_PAIRS = "reproduce/pairs.csv"  # per pair of variants: difference against seed noise
REPRODUCE_MD = "reproduce/reproduce.md"  # both tables in markdown
REPRODUCE_PLOT = "reproduce/seed_spread.png"
SEED_STATS = ("mean", "std", "min", "max")  # metrics test_accuracy_<stat>.<variant>
# Artifacts of a sweep parent run.
SWEEP_TRIALS_CSV = "sweep/trials.csv"  # one row per trial: number, state, params, scores, run id, worker
SWEEP_TRIALS_MD = "sweep/trials.md"
SWEEP_BEST_PARAMS = "sweep/best_params.json"  # the best COMPLETE trial's hyperparameters
# On the run that took a champion decision (main, register, sweep): one row per decision.
DECISIONS = "registry/decisions.csv"

# Run tags. TAG_RUN_KEY identifies (configuration, code, data): a FINISHED run with the
# same key is reused by `main` and `reproduce` instead of training again.
TAG_VARIANT, TAG_DESCRIPTION, TAG_RUN_KEY = "variant", "description", "run_key"
TAG_CODE_VERSION, TAG_DATA_DIGEST, TAG_REUSED = "code_version", "data_digest", "reused_run_id"
TAG_CONFIG_KEY = "config_key"  # the run key without the seed: shared by a configuration's seed runs
TAG_DATA_SOURCE = "data_source"  # on main and reproduce runs
TAG_ROLE = "role"  # on a run that is not a training run: one of the ROLE_* values
ROLE_MAIN, ROLE_REPRODUCE, ROLE_EVALUATE, ROLE_SWEEP = "main", "reproduce", "evaluate", "sweep"
ROLE_REGISTER = "register"
ROLE_SERVE = "serve"  # a serving run (tracking/serving_runs.py)
ROLE_PROMOTE = "promote"  # the run of a `promote` decision (flows/promote.py)
# On a `verify` training run, and on the version it verified.
TAG_VERIFIES = "verifies"  # the run: "<model name>/<version>" it re-trained
TAG_VERIFIED = "verified"  # the version: "<matches|DIFFERS> by run <run id>", the latest verify
# On every run the pipeline opens: where its process runs, and when it last showed life
# (tracking/liveness.py ends the RUNNING runs whose process died).
TAG_HOST, TAG_PID, TAG_PROCESS_START = "host", "pid", "process_start"  # process_start: seconds since the epoch
TAG_HEARTBEAT = "heartbeat"  # milliseconds since the epoch: the run's start, then every epoch
TAG_THREADS = "threads"  # on a training run: TensorFlow's threads per op it trained on (core/threads.py)
TAG_PARENT_RUN = "mlflow.parentRunId"  # MLflow's own: nests a run under its parent in the UI
TAG_CHILDREN = "children"  # on a main run: JSON {variant: training run id}, reused ones included
TAG_REGISTRATION_ERROR = "registration_error"  # on a main run whose registration failed
TAG_SEED_RUNS = "seed_runs"  # on a reproduce run: JSON {variant: [training run ids, by seed]}
TAG_STOPPED = "stopped_early"  # why an after_epoch hook stopped the run's training (a pruned trial)
TAG_MODEL_URI, TAG_MODEL_ID = "model_uri", "model_id"  # on an evaluate run
# On the run that registered a version (main, sweep parent), and the decision on the version.
TAG_REGISTERED_MODEL, TAG_REGISTERED_VERSION = "registered_model", "registered_version"
TAG_CHAMPION_DECISION = "champion_decision"
# On a version: the offline gates' Decision.gate ("first", "passed", "require_shadow" or the gate
# that refused; `promote` moves the champion only to a version they passed), and `promote`'s line.
TAG_OFFLINE_GATE, TAG_PROMOTE_DECISION = "offline_gate", "promote_decision"
# Sweep runs: trial runs carry all four, the sweep parent TAG_STUDY.
TAG_STUDY, TAG_TRIAL, TAG_TRIAL_STATE, TAG_WORKER = "study_name", "trial_number", "trial_state", "worker"
TAG_SWEEP_PARENT = "sweep_parent_run_id"  # on `mlflow run -e sweep`'s own run
# On the sweep parent: who wrote the last summary, trials_<state> counts, the best trial.
TAG_SUMMARY_BY, TAG_TRIALS_PREFIX = "summary_by", "trials_"
TAG_BEST_TRIAL, TAG_BEST_RUN_ID, TAG_BEST_VAL_ACCURACY = "best_trial", "best_run_id", "best_val_accuracy"
TAG_BEST_PARAM_PREFIX = "best."  # best.<hyperparameter>
# Optuna user attrs: on the study, and on each trial.
PARENT_ATTR, DIGEST_ATTR = "mlflow_parent_run_id", "data_digest"
RUN_ATTR, WORKER_ATTR = "mlflow_run_id", "worker"

# A serving run: a window's figures are metrics (step = window number, core/live.Window.figures),
# the pair's cumulative tables (core/live.Window.tables) these artifacts.
SERVING_TABLES = {table: f"serving/{table}.csv" for table in ("agreement", "latency", "predicted", "counts")}
TAG_SERVING_RUN = "serving_run"  # on a model version: the id of the latest run that served it

# Model Registry.
MODEL_NAME = "mnist-digits"  # default registered model name
CHAMPION, CHALLENGER = "champion", "challenger"  # aliases
CHAMPION_URI = f"models:/{MODEL_NAME}@{CHAMPION}"
# Tags on each model version.
VERSION_TAGS = ("variant", "run_id", "val_accuracy", "test_accuracy", "data_digest")
MODEL_CARD_TAG = "model_card"  # version tag: runs:/ URI of the version's markdown model card
MODEL_CARD_DIR = "model_card"  # on the training run: model_card/<model name>-v<version>.md
