"""GeSSL's training-time claims, measured from two runs' ``metrics.jsonl``: the "learning universality" curve
(accuracy of GeSSL over the baseline's, epoch by epoch) and the time each run needs to reach an accuracy.

Both read a per-epoch accuracy from the epoch records, by default the online linear probe's test accuracy
(``train.online_probe=true``) or else the kNN monitor's (``train.knn_monitor_every``); without either, there is no
curve (the functions return None and the report says so).
"""
from __future__ import annotations

from pathlib import Path

#: per-epoch accuracies the training loop can log, in order of preference
ACCURACY_KEYS = ("online_probe_test_acc", "knn_monitor_acc")


def epoch_accuracies(records: list[dict], key: str | None = None) -> tuple[str | None, dict[int, float]]:
    """(the key used, {epoch: accuracy}) from a run's records; ``key`` None picks the first of
    :data:`ACCURACY_KEYS` that the epoch records hold."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    for candidate in ([key] if key else ACCURACY_KEYS):
        found = {int(r["epoch"]): float(r[candidate]) for r in epochs if candidate in r}
        if found:
            return candidate, found
    return None, {}


def learning_universality(method_acc: dict[int, float], base_acc: dict[int, float], first_epoch: int = 0
                          ) -> dict | None:
    """ratio(e) = acc_method(e) / acc_base(e) over the epochs e >= ``first_epoch`` both runs logged; returns
    {"epochs", "ratios", "mean_ratio", "fraction_ahead"} (None without a common epoch). A mean ratio > 1 means the
    method's accuracy is ahead on average; "fraction_ahead" is the share of epochs with ratio > 1."""
    epochs = sorted(e for e in method_acc.keys() & base_acc.keys() if e >= first_epoch and base_acc[e] > 0)
    if not epochs:
        return None
    ratios = [method_acc[e] / base_acc[e] for e in epochs]
    return {"epochs": epochs, "ratios": ratios, "mean_ratio": sum(ratios) / len(ratios),
            "fraction_ahead": sum(r > 1 for r in ratios) / len(ratios)}


def time_to_accuracy(records: list[dict], accuracies: dict[int, float], target: float) -> float | None:
    """Wall-clock seconds of training (the epoch records' ``seconds``, summed) until the first epoch whose
    accuracy reaches ``target``; None if no epoch does."""
    elapsed = 0.0
    seconds = {int(r["epoch"]): float(r.get("seconds", 0.0)) for r in records if r.get("kind") == "epoch"}
    for epoch in sorted(seconds):
        elapsed += seconds[epoch]
        if epoch in accuracies and accuracies[epoch] >= target:
            return elapsed
    return None


def plot_learning_universality(curve: dict, png_path: str | Path, title: str) -> Path:
    """The ratio curve with the parity line at 1, as a PNG."""
    from matplotlib.figure import Figure

    from tc2ssl.train.checkpoint import atomic_write_bytes

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.subplots()
    ax.plot([e + 1 for e in curve["epochs"]], curve["ratios"], "o-", markersize=3)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy ratio")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    atomic_write_bytes(png_path, lambda fh: fig.savefig(fh, format="png"))
    return png_path


def compare_section(runs: dict[str, list[dict]], baseline: str, out_dir: str | Path) -> list[str]:
    """Markdown lines for ``tc2ssl compare``: per run other than ``baseline`` (names of ``runs``, each a run's
    records), the learning-universality ratio (plotted to ``<out_dir>/universality_<name>.png``) and the training
    time each run needs to reach the baseline's final accuracy."""
    key, base_acc = epoch_accuracies(runs.get(baseline, []))
    if not base_acc:
        return ["Learning universality: no per-epoch accuracy in the runs (set train.online_probe=true or "
                "train.knn_monitor_every=1 to measure it).", ""]
    target = base_acc[max(base_acc)]
    lines = [f"Learning universality ({key} per epoch, run / {baseline}) and training time to {baseline}'s final "
             f"{key} ({100 * target:.2f}%):", "",
             "| run | mean ratio | epochs ahead | time to target (s) |", "|---|---|---|---|"]
    for name, records in runs.items():
        _, acc = epoch_accuracies(records, key)
        reached = time_to_accuracy(records, acc, target)
        reached_text = "not reached" if reached is None else f"{reached:.0f}"
        curve = learning_universality(acc, base_acc) if name != baseline else None
        if curve is None:
            lines.append(f"| {name} | – | – | {reached_text} |")
            continue
        plot_learning_universality(curve, Path(out_dir) / f"universality_{name}.png", f"{name} / {baseline}: {key}")
        lines.append(f"| {name} | {curve['mean_ratio']:.3f} | {100 * curve['fraction_ahead']:.0f}% | "
                     f"{reached_text} |")
    return lines + [""]
