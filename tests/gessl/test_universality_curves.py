import pytest

from tc2ssl.gessl.curves import compare_section, epoch_accuracies, learning_universality, time_to_accuracy


def records(accuracies, seconds=10.0, key="online_probe_test_acc"):
    return [{"kind": "step", "step": 0, "loss": 1.0}] + [
        {"kind": "epoch", "epoch": e, "seconds": seconds, key: a} for e, a in enumerate(accuracies)]


def test_epoch_accuracies_prefers_the_online_probe_and_falls_back_to_knn():
    assert epoch_accuracies(records([0.5, 0.6])) == ("online_probe_test_acc", {0: 0.5, 1: 0.6})
    assert epoch_accuracies(records([0.4], key="knn_monitor_acc"))[0] == "knn_monitor_acc"
    assert epoch_accuracies([{"kind": "epoch", "epoch": 0}]) == (None, {})


def test_learning_universality_ratios_and_share_ahead():
    curve = learning_universality({0: 0.5, 1: 0.9, 2: 0.8}, {0: 0.25, 1: 0.9, 2: 1.0}, first_epoch=0)
    assert curve["ratios"] == [2.0, 1.0, 0.8]
    assert curve["mean_ratio"] == pytest.approx(3.8 / 3) and curve["fraction_ahead"] == pytest.approx(1 / 3)
    assert learning_universality({0: 0.5}, {0: 0.5}, first_epoch=1) is None


def test_time_to_accuracy_sums_epoch_seconds_until_the_target():
    run = records([0.2, 0.5, 0.7], seconds=3.0)
    _, acc = epoch_accuracies(run)
    assert time_to_accuracy(run, acc, 0.5) == 6.0 and time_to_accuracy(run, acc, 0.9) is None


def test_compare_section_plots_and_tabulates(tmp_path):
    lines = compare_section({"none": records([0.4, 0.6], 5.0), "gessl": records([0.5, 0.7], 8.0)}, "none", tmp_path)
    text = "\n".join(lines)
    assert "| gessl | 1.208 | 100% | 16 |" in text and "| none | – | – | 10 |" in text
    assert (tmp_path / "universality_gessl.png").stat().st_size > 0
    assert "no per-epoch accuracy" in compare_section({"none": records([])}, "none", tmp_path)[0]
