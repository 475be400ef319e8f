"""Benchmark figures: every row of a crowded plot is told apart, and an equal-compute row is drawn with its row."""
from tc2ssl.benchmarks.plots import plot_metric_bars, plot_time_to_accuracy, row_styles

# the rows of a cifar10_subset benchmark with BYOL as a second base method: more than the ten colours
CIFAR_BYOL_ROWS = ["random_init", "none", "tasks", "tc2", "tc2 K=2", "tc2 K=8", "tc2 K=16", "byol/none", "byol/tasks",
                   "byol/tc2", "none +6 epochs", "umm", "none@tasks", "none@tc2", "byol/none@byol/tasks",
                   "byol/none@byol/tc2"]


def test_every_row_gets_its_own_style_and_a_comparator_takes_its_rows_colour_dashed():
    styles = row_styles(CIFAR_BYOL_ROWS)
    assert set(styles) == set(CIFAR_BYOL_ROWS)
    assert len(set(styles.values())) == len(CIFAR_BYOL_ROWS)          # no two rows drawn alike
    for comparator, row in [("none@tc2", "tc2"), ("byol/none@byol/tc2", "byol/tc2"), ("none@tasks", "tasks")]:
        assert styles[comparator] == (styles[row][0], "--")
    assert all(style[1] != "--" for label, style in styles.items() if "@" not in label)


def test_a_comparator_of_a_row_not_plotted_still_gets_a_style():
    styles = row_styles(["none", "none@gessl"])
    assert styles["none@gessl"][1] == "--" and styles["none@gessl"][0] != styles["none"][0]


def test_crowded_figures_render(tmp_path):
    curve = [{"epoch": e, "knn": 0.1 * e, "seconds": 10.0 * e, "images": 100 * e} for e in range(3)]
    assert plot_time_to_accuracy({label: curve for label in CIFAR_BYOL_ROWS}, tmp_path / "t.png", "t").is_file()
    summary = {label: {"m": {"mean": 0.5, "std": 0.01}} for label in CIFAR_BYOL_ROWS}
    assert plot_metric_bars(summary, ["m"], tmp_path / "b.png", "b").is_file()
