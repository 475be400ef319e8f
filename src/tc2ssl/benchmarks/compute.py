"""Equal-compute rows of a benchmark: the baseline given the training wall-clock of each plug-in's run.

Compute is measured as training wall-clock (the epoch records' seconds in metrics.jsonl: optimiser steps only,
no set-up, no evaluation, no time-to-accuracy kNN), not as encoder forward/backward passes: TC²'s extra cost is
partly in passes that are not the encoder's (the inner step, the calibration), and wall-clock is what a user
pays. On the first seed, after every row has run, a row R paired with baseline B (R's ``baseline``) gets the
row ``B@R``: B's config trained for

    epochs(B@R) = max(1, round(seconds(R) / (seconds(B) / epochs(B))))

epochs (seconds summed over the row's pretraining folders), the same for every seed. When that equals B's own
epochs, B itself is the equal-compute comparator and no row is added; rows that get the same epochs of the same
B share one comparator (the first such row names it), since its runs would be the same runs again. The
measurement comes from one seed on a machine that may be shared, so it carries that run's timing noise;
results.json records the seconds it used. Rows marked ``equal_compute=False`` get no comparator: the K
variants, the post-hoc rows (paired with their own plain-SSL control) and TC²'s calibration controls (compared with
TC² at equal epochs).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from tc2ssl.benchmarks.curves import training_seconds


@dataclass(frozen=True)
class ComputeMatch:
    """Row ``row``'s equal-compute comparator ``comparator`` (a new row ``B@R``, or B itself)."""

    row: str
    comparator: str
    epochs: int
    row_seconds: float
    baseline_seconds_per_epoch: float

    def as_dict(self) -> dict:
        return {"comparator": self.comparator, "epochs": self.epochs, "row_seconds": self.row_seconds,
                "baseline_seconds_per_epoch": self.baseline_seconds_per_epoch}


def _seconds_and_epochs(record: dict) -> tuple[float, int]:
    """A run's training seconds summed over its pretraining folders, and the epochs of one folder."""
    measured = [training_seconds(Path(run_dir)) for run_dir in record["run_dirs"]]
    return sum(seconds for seconds, _ in measured), max((epochs for _, epochs in measured), default=0)


def match_compute(rows: list, runs: dict, seed: str) -> tuple[list[ComputeMatch], list]:
    """The equal-compute comparators of ``rows`` from the runs of ``seed``, and the new rows they need (copies of
    the baseline rows with ``train.epochs`` set). ``rows``: :class:`tc2ssl.benchmarks.suites.Row` objects."""
    by_label = {row.label: row for row in rows}
    matches, new_rows = [], []
    made: dict[tuple[str, int], str] = {}   # (baseline, epochs) -> the comparator row already added for them
    for row in rows:
        baseline = by_label.get(row.baseline)
        if (baseline is None or row.label == baseline.label or row.untrained or baseline.untrained
                or not row.equal_compute or "@" in row.label):
            continue
        row_seconds, _ = _seconds_and_epochs(runs[row.label][seed])
        base_seconds, base_epochs = _seconds_and_epochs(runs[baseline.label][seed])
        if base_epochs == 0 or base_seconds <= 0.0:
            continue
        per_epoch = base_seconds / base_epochs
        epochs = max(1, round(row_seconds / per_epoch))
        comparator = baseline.label
        if epochs != base_epochs and (baseline.label, epochs) in made:
            comparator = made[(baseline.label, epochs)]
        elif epochs != base_epochs:
            comparator = made[(baseline.label, epochs)] = f"{baseline.label}@{row.label}"
            new_rows.append(replace(baseline, label=comparator, overrides=(*baseline.overrides,
                                                                           f"train.epochs={epochs}"),
                                    baseline=baseline.label, equal_compute=False))
        matches.append(ComputeMatch(row.label, comparator, epochs, row_seconds, per_epoch))
    return matches, new_rows
