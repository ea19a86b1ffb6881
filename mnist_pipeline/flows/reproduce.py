"""`reproduce`: every variant at several seeds, as child runs of one parent run, and
whether the differences between variants are larger than seed noise.

On the parent run: the per-seed results (reproduce/runs.csv), the seed table of test
accuracy mean, std, min and max beside the study (seed_table.csv), the pairwise Welch
tests (pairs.csv), both tables in markdown (reproduce.md), a strip plot of every seed
(seed_spread.png) and `test_accuracy_<stat>.<variant>` metrics. FINISHED runs with the
same run key are reused unless `force`. Prints both tables.
"""

from __future__ import annotations

import json

import pandas as pd

from mnist_pipeline import names
from mnist_pipeline.core import plots, seeds
from mnist_pipeline.core.data import load_for
from mnist_pipeline.core.params import ReproduceParams
from mnist_pipeline.core.variants import VARIANTS
from mnist_pipeline.tracking import access, liveness, readback, runs, store, trainers


def run(params: ReproduceParams) -> pd.DataFrame:
    """Returns the seed table."""
    configs = params.configs()
    trainers.prepare(len(configs), params.workers)
    data = load_for(params.data_dir, [cfg.validation_split for cfg in configs])
    store.check_tracking_store()
    access.require_runs("reproduce")  # refused before any training
    liveness.end_dead_runs("reproduce")  # runs left RUNNING by a process killed hard
    variants = list(dict.fromkeys(c.variant for c in configs))
    with runs.ended_run(
        run_name="reproduce", tags={names.TAG_DATA_DIGEST: data.digest, names.TAG_ROLE: names.ROLE_REPRODUCE}
    ):
        runs.log_missing_params(
            {
                "variants": ",".join(variants),
                "seeds": ",".join(map(str, sorted({c.seed for c in configs}))),
                "force": str(params.force).lower(),
            }
        )
        runs.set_tags({names.TAG_DATA_SOURCE: data.source})
        children = trainers.train_or_reuse(configs, data, params.force, params.workers)
        results = readback.seed_results([c.seed for c in configs], children)
        by_variant = {v: list(results.loc[results["variant"] == v, "run_id"]) for v in variants}
        runs.set_tags({names.TAG_SEED_RUNS: json.dumps(by_variant)})
        study = {name: VARIANTS[name].study_test_accuracy for name in variants}
        table, pairs = seeds.seed_table(results, study), seeds.pairwise(results)
        text = seeds.markdown(table, pairs)
        runs.log_text(results.to_csv(index=False), names.REPRODUCE_RUNS)
        runs.log_text(table.to_csv(index=False), names.REPRODUCE_TABLE)
        runs.log_text(pairs.to_csv(index=False), names.REPRODUCE_PAIRS)
        runs.log_text(text, names.REPRODUCE_MD)
        runs.log_figure(plots.seed_spread(results, study), names.REPRODUCE_PLOT)
        for row in table.itertuples():
            runs.log_metrics(
                {
                    f"test_accuracy_{stat}.{row.variant}": getattr(row, stat)
                    for stat in names.SEED_STATS
                    if pd.notna(getattr(row, stat))
                }
            )
    print(text)
    return table
