"""An MLflow Project reproducing a small MNIST regularization study."""

__version__ = "0.1.0"
