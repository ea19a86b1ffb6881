"""Live evidence: what the server saw of the champion and the shadowed challenger, as counts
that add up. No MLflow, no HTTP, no threads: `serve` feeds a Window (one call per request,
per shadow result, per drop, per labelled request), tracking logs its figures() and tables(),
and promote sums a pair's windows (Window.from_tables) for the live gates (promotion_rule.py).

Everything is a count or a sum, so the sum of two windows is the window fed both, and a ratio
(agreement, accuracy, mean top probability, a percentile) is read from the sums at the end.

Two accuracies differ in what they count. The champion answers every request, so its live
accuracy is on every labelled image. The challenger scores only the images shadowed (a
fraction of requests, fewer when the queue is full or it fails), so it is compared with the
champion on the labelled images *both* scored: the paired table (who got each right) and
the paired accuracies. The champion's accuracy on all labelled images is its own figure, not
a comparison: drops come in bursts of load, so the shadowed images need not be a random
sample of the requests.
"""

import math
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd

from mnist_pipeline.core.data import NUM_CLASSES

# Compute time of a request, in seconds: 10 buckets a decade from 0.1 ms to 10 s (edges 1,
# 1.26, 1.58, 2, 2.51, 3.16, 3.98, 5.01, 6.31, 7.94 times a power of ten), one bucket below and
# one past them. Fixed, so windows add up; a percentile read from them is within a factor
# 10**0.1 = 1.26 of the true one (see quantile).
LATENCY_EDGES = 10.0 ** (np.arange(-40, 11) / 10)
PSI_FLOOR = 1e-4  # share given to a class one side never predicted, so that its log is finite
MODELS = ("champion", "challenger")


class _Sums:
    """A dataclass whose fields all add: the sum of two is field by field."""

    def __add__(self, other):
        return type(self)(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})


def _zeros(*shape):
    return field(default_factory=lambda: np.zeros(shape, np.int64))


@dataclass(eq=False)  # arrays: compare figures() or tables()
class Scores(_Sums):
    """What one model answered in a window."""

    latency: np.ndarray = _zeros(len(LATENCY_EDGES) + 1)  # timed requests per compute-time bucket
    predicted: np.ndarray = _zeros(NUM_CLASSES)  # images per predicted class
    top_probability: float = 0.0  # sum over images of the top probability
    requests: int = 0  # answered, timed or not

    def record(self, probabilities: np.ndarray, seconds: float | None) -> np.ndarray:
        """Count one request: its (n, 10) probabilities and compute seconds (None: not timed on
        its own); its classes back."""
        classes = probabilities.argmax(axis=1)
        self.requests += 1
        if seconds is not None:
            self.latency[np.searchsorted(LATENCY_EDGES, seconds, side="right")] += 1
        self.predicted += np.bincount(classes, minlength=NUM_CLASSES)
        self.top_probability += float(probabilities.max(axis=1).sum())
        return classes

    def figures(self, name: str) -> dict[str, float]:
        """p50 and p99 in ms and the mean top probability, named for the model; {} if it scored nothing."""
        images = self.predicted.sum()
        if not images:
            return {}
        timed = (
            {f"{name}_p{q}_ms": 1000 * quantile(self.latency, q / 100) for q in (50, 99)} if self.latency.any() else {}
        )
        return timed | {f"{name}_mean_top_probability": self.top_probability / images}


@dataclass(eq=False)  # arrays: compare figures() or tables()
class Window(_Sums):
    """The serving figures of a window of time (or, summed, of any stretch of windows)."""

    champion: Scores = field(default_factory=Scores)  # every request
    challenger: Scores = field(default_factory=Scores)  # the requests shadowed, valid answers only
    agreement: np.ndarray = _zeros(NUM_CLASSES, NUM_CLASSES)  # shadowed images: champion class x challenger class
    dropped: int = 0  # requests not shadowed because the shadow queue was full
    errors: int = 0  # shadowed requests the challenger failed: raised, too late, or not 10 finite probabilities a row
    labelled: int = 0  # images given a true label
    champion_right: int = 0  # of them, those the champion classed right
    paired: np.ndarray = _zeros(
        2, 2
    )  # labelled images both scored: champion right (row 0 no, 1 yes) x challenger right

    def answer(self, probabilities: np.ndarray, seconds: float) -> np.ndarray:
        """The champion's (n, 10) answer to a request and its compute seconds; its classes back."""
        return self.champion.record(probabilities, seconds)

    def shadow(self, champion_classes: np.ndarray, probabilities, seconds: float | None) -> np.ndarray | None:
        """The challenger's answer to a shadowed request (None if it raised or timed out) and its
        compute seconds (None: scored with others, not timed); its classes back, or None when the
        answer counted as an error."""
        if not valid(probabilities, len(champion_classes)):
            self.errors += 1
            return None
        classes = self.challenger.record(probabilities, seconds)
        self.agreement += np.bincount(champion_classes * NUM_CLASSES + classes, minlength=NUM_CLASSES**2).reshape(
            NUM_CLASSES, NUM_CLASSES
        )
        return classes

    def drop(self) -> None:
        """A request not shadowed: the queue was full."""
        self.dropped += 1

    def label(self, labels: np.ndarray, champion_classes: np.ndarray, challenger_classes: np.ndarray | None) -> None:
        """True labels of a request's images, with each model's classes (None: the challenger
        has not scored it, or will not). They count in the window they arrive in, which may be
        later than the request's."""
        self.labelled += len(labels)
        self.champion_right += int((champion_classes == labels).sum())
        if challenger_classes is not None:
            self.pair(labels, champion_classes, challenger_classes)

    def pair(self, labels: np.ndarray, champion_classes: np.ndarray, challenger_classes: np.ndarray) -> None:
        """Labelled images both scored, into the paired table: counted when the later of the
        labels and the challenger's answer arrives."""
        both = 2 * (champion_classes == labels) + (challenger_classes == labels)
        self.paired += np.bincount(both, minlength=4).reshape(2, 2)

    def figures(self, reference: np.ndarray | None = None) -> dict[str, float]:
        """Flat metrics for MLflow. ``reference``: the champion's predicted-class counts on its
        validation split, for the psi. A ratio over nothing (no shadowed or labelled image) is left out."""
        shadowed, paired, images = self.agreement.sum(), self.paired.sum(), self.champion.predicted.sum()
        figures = {
            "requests": self.champion.requests,
            "images": images,
            "shadowed_requests": self.challenger.requests,
            "shadowed_images": shadowed,
            "dropped_requests": self.dropped,
            "challenger_errors": self.errors,
            "labelled_images": self.labelled,
            "paired_images": paired,
            "only_champion_right": self.paired[1, 0],
            "only_challenger_right": self.paired[0, 1],
        }
        figures |= self.champion.figures("champion") | self.challenger.figures("challenger")
        if shadowed:
            figures["agreement"] = np.trace(self.agreement) / shadowed
        if self.labelled:
            figures |= {
                "labelled_fraction": self.labelled / images,
                "champion_live_accuracy": self.champion_right / self.labelled,
            }
        if paired:
            figures["champion_paired_accuracy"] = self.paired[1].sum() / paired
            figures["challenger_live_accuracy"] = self.paired[:, 1].sum() / paired
        if reference is not None and images:
            figures["psi"] = psi(self.champion.predicted, reference)
        return {name: float(value) for name, value in figures.items()}

    def tables(self) -> dict[str, pd.DataFrame]:
        """The window as tables (artifacts): agreement, latency, predicted and counts; from_tables reads them back."""
        digits = pd.RangeIndex(NUM_CLASSES)
        bounds = np.concatenate([[0.0], LATENCY_EDGES, [np.inf]]) * 1000
        per_model = {name: getattr(self, name) for name in MODELS}
        counts = {
            "dropped": self.dropped,
            "errors": self.errors,
            "labelled": self.labelled,
            "champion_right": self.champion_right,
            **{f"{name}_top_probability": scores.top_probability for name, scores in per_model.items()},
            **{f"{name}_requests": scores.requests for name, scores in per_model.items()},
            **{f"paired_{c}{k}": self.paired[c, k] for c in (0, 1) for k in (0, 1)},
        }
        latency = pd.DataFrame(
            {"from_ms": bounds[:-1], "to_ms": bounds[1:]} | {n: s.latency for n, s in per_model.items()}
        )
        return {
            "agreement": pd.DataFrame(
                self.agreement, index=digits.rename("champion"), columns=[f"challenger_{d}" for d in digits]
            ),
            "latency": latency.rename_axis("bucket"),
            "predicted": pd.DataFrame({n: s.predicted for n, s in per_model.items()}, index=digits.rename("digit")),
            "counts": pd.DataFrame({"value": counts}).rename_axis("figure"),
        }

    @classmethod
    def from_tables(cls, tables: dict[str, pd.DataFrame]) -> "Window":
        """The window tables() wrote."""
        counts = tables["counts"]["value"]
        models = {
            name: Scores(
                tables["latency"][name].to_numpy(np.int64),
                tables["predicted"][name].to_numpy(np.int64),
                float(counts[f"{name}_top_probability"]),
                int(counts[f"{name}_requests"]),
            )
            for name in MODELS
        }
        paired = np.array([[counts[f"paired_{c}{k}"] for k in (0, 1)] for c in (0, 1)], np.int64)
        ints = {key: int(counts[key]) for key in ("dropped", "errors", "labelled", "champion_right")}
        return cls(**models, agreement=tables["agreement"].to_numpy(np.int64), paired=paired, **ints)


def valid(probabilities, rows: int) -> bool:
    """Is a challenger's answer 10 finite probabilities for each of the request's ``rows`` images?"""
    return (
        isinstance(probabilities, np.ndarray)
        and probabilities.shape == (rows, NUM_CLASSES)
        and bool(np.isfinite(probabilities).all())
    )


def quantile(counts: np.ndarray, q: float) -> float:
    """The ``q`` quantile (0..1) of the seconds counted per bucket of LATENCY_EDGES; nan if none.

    It is the value of rank ceil(q n) (numpy's "inverted_cdf"), placed log-linearly by that rank
    among its bucket's values: always in the bucket that holds the true value, so within a factor
    10**0.1 = 1.26 of it. Values under 0.1 ms read as 0.1 ms, those past 10 s as 10 s.
    """
    n = int(counts.sum())
    if not n:
        return math.nan
    rank = max(math.ceil(round(q * n, 9)), 1)  # the rounding: 0.99 * 100 is 99.00000000000001
    cumulative = np.cumsum(counts)
    bucket = int(np.searchsorted(cumulative, rank))  # the first bucket reaching that rank
    if bucket in (0, len(LATENCY_EDGES)):
        return float(LATENCY_EDGES[min(bucket, len(LATENCY_EDGES) - 1)])
    low, high = LATENCY_EDGES[bucket - 1], LATENCY_EDGES[bucket]
    share = (rank - cumulative[bucket - 1] - 0.5) / counts[bucket]  # the rank's middle place in its bucket
    return float(low * (high / low) ** share)


def psi(observed: np.ndarray, reference: np.ndarray) -> float:
    """Population stability index of predicted-class counts against reference counts:
    sum over classes of (p - r) ln(p / r), on shares. 0 when the shares are equal; by chance
    alone about 9 / n on n images (10 classes); read above 0.1 as a shift, above 0.25 as a large
    one. A share under PSI_FLOOR counts as PSI_FLOOR: a class one side never predicted then adds
    r ln(r / 1e-4), 0.69 for r = 0.1, instead of infinity."""
    p, r = (np.maximum(np.asarray(c, float) / np.sum(c), PSI_FLOOR) for c in (observed, reference))
    return float(np.sum((p - r) * np.log(p / r)))
