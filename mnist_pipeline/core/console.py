"""What a training prints: one header line per run and one line per epoch, each naming its
run (trainings side by side print in turns), short enough for any terminal."""

from mnist_pipeline.core.secrets import mask_url


def header(label: str, run_id: str, epochs: int) -> str:
    return f"{label}: run {run_id}, {epochs} epochs"


def epoch_line(label: str, epoch: int, epochs: int, row: dict[str, float]) -> str:
    width = len(str(epochs))
    return (
        f"{label}  epoch {epoch:>{width}}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}"
        f"  val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}  {row['epoch_seconds']:.1f} s"
    )


def summary(run_id: str, rows: list[dict]) -> str:
    """The end of a `main` run: per variant its last val_accuracy, test_accuracy and seconds
    of training (a reused run says so), in under 100 columns."""
    width = max(len("variant"), *(len(row["variant"]) for row in rows))
    lines = [f"main run {run_id}", f"  {'variant':<{width}}  val_accuracy  test_accuracy  seconds"]
    for row in rows:
        lines.append(
            f"  {row['variant']:<{width}}  {row['val_accuracy']:>12.4f}  {row['test_accuracy']:>13.4f}"
            f"  {row['train_seconds']:>7.1f}{'  (reused)' if row['reused'] else ''}"
        )
    return "\n".join(lines)


def ui_hint(tracking_uri: str) -> str:
    """How to look at the runs: the server's address, or the command that opens a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"the runs: {mask_url(tracking_uri)}"
    return f"the runs: mlflow ui --backend-store-uri {tracking_uri}"
