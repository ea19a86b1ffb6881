"""What a training prints: one header line per run and one line per epoch, short enough
for any terminal."""

from __future__ import annotations


def header(variant: str, run_id: str, epochs: int) -> str:
    return f"{variant}: run {run_id}, {epochs} epochs"


def epoch_line(epoch: int, epochs: int, row: dict[str, float]) -> str:
    width = len(str(epochs))
    return (
        f"  epoch {epoch:>{width}}/{epochs}  loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}"
        f"  val_loss {row['val_loss']:.4f}  val_accuracy {row['val_accuracy']:.4f}  {row['epoch_seconds']:.1f} s"
    )
