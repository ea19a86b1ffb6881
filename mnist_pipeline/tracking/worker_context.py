"""Where training workers come from: multiprocessing's fork server, a process that imports the
training code (TensorFlow too) once, never runs an op, and forks each worker ready to train
(Linux, macOS); elsewhere each worker is spawned and imports it itself (about 5 s here, two
workers importing at once on 2 cores: 8 s). Light to import: the CLI starts the fork server
before it imports a command's own code, so the two load side by side."""

import multiprocessing

FORKSERVER = "forkserver" in multiprocessing.get_all_start_methods()
CONTEXT = multiprocessing.get_context("forkserver" if FORKSERVER else "spawn")
if FORKSERVER:
    CONTEXT.set_forkserver_preload(["mnist_pipeline.tracking.track_training"])


def start() -> None:
    """Start the fork server now, if there is one: it imports the training code meanwhile."""
    if FORKSERVER:
        import multiprocessing.forkserver

        multiprocessing.forkserver.ensure_running()
