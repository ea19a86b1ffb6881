"""`reproduce`: every variant at several seeds, as child runs of one parent run, and
whether the differences between variants are larger than seed noise.

On the parent run: the per-seed results (reproduce/run_lifecycle.csv), the seed table of test
accuracy mean, std, min and max beside the study (seed_table.csv), the pairwise Welch
tests (pairs.csv), both tables in markdown (reproduce.md), a strip plot of every seed
(seed_spread.png) and `test_accuracy_<stat>.<variant>` metrics. FINISHED runs with the
same run key are reused unless `force`. Prints both tables.
"""

import json

import pandas as pd

from mnist_pipeline import names
from mnist_pipeline.core import plots, seeds
from mnist_pipeline.core.commands import ReproduceParams
from mnist_pipeline.core.variants import VARIANTS
from mnist_pipeline.tracking import readback, run_lifecycle, training_dispatch


def run(params: ReproduceParams) -> pd.DataFrame:
    """Returns the seed table."""
    configs = params.configs()
    data = run_lifecycle.preflight("reproduce", params.data_dir, [cfg.validation_split for cfg in configs])
    seed_list = ",".join(map(str, sorted({c.seed for c in configs})))
    logged = {"variants": ",".join(params.variants), "seeds": seed_list, "force": str(params.force).lower()}
    with run_lifecycle.parent_run(names.ROLE_REPRODUCE, data, logged):
        children = training_dispatch.train_or_reuse(configs, data, params.force, params.workers)
        results = readback.seed_results([c.seed for c in configs], children)
        by_variant = {v: list(results.loc[results["variant"] == v, "run_id"]) for v in params.variants}
        run_lifecycle.set_tags({names.TAG_SEED_RUNS: json.dumps(by_variant)})
        study = {name: VARIANTS[name].study_test_accuracy for name in params.variants}
        table, pairs = seeds.seed_table(results, study), seeds.pairwise(results)
        text = seeds.markdown(table, pairs)
        run_lifecycle.log_text(results.to_csv(index=False), names.REPRODUCE_RUNS)
        run_lifecycle.log_text(table.to_csv(index=False), names.REPRODUCE_TABLE)
        run_lifecycle.log_text(pairs.to_csv(index=False), names.REPRODUCE_PAIRS)
        run_lifecycle.log_text(text, names.REPRODUCE_MD)
        run_lifecycle.log_figure(plots.seed_spread(results, study), names.REPRODUCE_PLOT)
        stats = table.melt("variant", list(names.SEED_STATS), "stat").dropna()  # std: none with one seed
        run_lifecycle.log_metrics({f"test_accuracy_{s.stat}.{s.variant}": s.value for s in stats.itertuples()})
    print(text)
    return table
