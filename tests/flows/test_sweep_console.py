"""What `mnist-pipeline sweep` prints, as a user sees it: a process of its own (its warnings
and Optuna's log lines reach the terminal as they would), on tiny data. A module apart from
test_sweep.py, whose server test keeps it in the servers' worker."""

import subprocess
import sys

# `mnist-pipeline sweep` with a tiny search space.
SHRUNK = """
import sys
from mnist_pipeline import cli
from mnist_pipeline.flows import study

study.SEARCH_SPACE = study.SearchSpace(hidden_units=("16,8,8", "32,16,8"), epochs=(1, 2), batch_size=(64,))
sys.argv = ["mnist-pipeline", *sys.argv[1:]]
cli.main()
"""


def test_the_sweep_prints_no_warning_no_line_over_200_and_its_table_within_120(
    tracking_store, tiny_mnist_dir, tmp_path
):
    argv = ["sweep", "--n-trials", "2", "--data-dir", str(tiny_mnist_dir)]
    done = subprocess.run(
        [sys.executable, "-c", SHRUNK, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert [line for line in lines if "Warning" in line] == []
    assert [line for line in lines if len(line) > 200] == []
    start = next(i for i, line in enumerate(lines) if ", sweep parent run " in line)
    table = lines[start + 1 : start + 4]  # the header, a row per trial
    assert table[0].split()[:2] == ["trial", "state"] and [row.split()[0] for row in table[1:]] == ["0", "1"]
    assert max(map(len, table)) <= 120, "\n".join(table)
