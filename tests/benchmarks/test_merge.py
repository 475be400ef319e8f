"""``tc2ssl merge``: benchmarks of the same suite and preset merged into one table equal the table of one invocation
over all their rows and seeds; rows of another base method get that method's labels; anything that would make the
merged table mix different runs or conditions is refused with a clear error."""
import json
import random
from pathlib import Path

import pytest

from tc2ssl import config as config_mod
from tc2ssl.benchmarks import SUITES, get_preset
from tc2ssl.benchmarks.compute import ComputeMatch
from tc2ssl.benchmarks.merge import merge_results, relabel
from tc2ssl.benchmarks.suites import Row, finish_results, method_rows, summarize_runs
from tc2ssl.cli import main
from tc2ssl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
STANDARD = REPO / "docs" / "figures" / "benchmarks" / "standard"
SUITE = SUITES.get("colored_mnist")
OPTIONS = {"max_test": 0, "rho": 0.9, "curve_every": 2, "curve_images": 1000, "equal_compute": 2,
           "posthoc_epochs": 0}
ROWS = [Row("none", "none"), Row("tc2", "tc2"), Row("none@tc2", "none", ("train.epochs=7",), "none", False, False)]
MATCH = ComputeMatch("tc2", "none@tc2", 7, 70.0, 10.0, 7)


def record(rng: random.Random) -> dict:
    metrics = {m: round(rng.random(), 4) for m in SUITE.metrics}
    curve = [{"epoch": e, "knn": rng.random(), "seconds": 10.0 * e, "images": 100.0 * e} for e in (0, 2, 4)]
    sigma = rng.random()
    return {"metrics": metrics, "seconds": 1.0, "run_dirs": [], "diagnostics": {}, "curve": {"run": curve},
            "conflict": {"run": [rng.uniform(-1, 1) for _ in range(4)]},
            "universality": {"sigma_task": sigma, "U_task": 1 - sigma}}


def all_runs(rows: list[Row], seeds: list[int], seed: int = 0) -> dict:
    rng = random.Random(seed)
    return {row.label: {str(s): record(rng) for s in seeds} for row in rows}


def write_benchmark(folder: Path, runs: dict, seeds: list[int], rows=ROWS, matches=(MATCH,),
                    overrides: tuple[str, ...] = ()) -> dict:
    base = config_mod.load_config((), ["model.backbone=small_cnn_tiny", *overrides])
    kept = {row.label: {str(s): runs[row.label][str(s)] for s in seeds} for row in rows}
    result = summarize_runs(SUITE, get_preset("standard"), base, rows, seeds, OPTIONS, kept, list(matches))
    folder.mkdir(parents=True)
    finish_results(SUITE, result, base, folder)
    return result


def test_seeds_of_two_folders_merge_to_the_table_of_one_run_over_all_seeds(tmp_path):
    runs = all_runs(ROWS, [0, 1, 2, 3, 4])
    whole = write_benchmark(tmp_path / "whole", runs, [0, 1, 2, 3, 4])
    write_benchmark(tmp_path / "early", runs, [0, 1, 2])
    write_benchmark(tmp_path / "late", runs, [3, 4])
    merged = merge_results([tmp_path / "early", tmp_path / "late"], tmp_path / "merged")
    for key in ("summary", "paired", "paired_compute", "equal_compute", "curves", "universality",
                "time_to_baseline", "conflict_vs_primary"):
        assert merged[key] == whole[key], key
    assert merged["seeds"] == [0, 1, 2, 3, 4]
    assert merged["merged_from"]["tc2"] == {**{s: str(tmp_path / "early") for s in "012"},
                                            **{s: str(tmp_path / "late") for s in "34"}}
    text = (tmp_path / "merged" / "results.md").read_text()
    assert "## Merged from" in text and f"| {tmp_path / 'late'} | 4 | none, tc2, none@tc2 |" in text
    assert json.loads((tmp_path / "merged" / "results.json").read_text())["summary"] == whole["summary"]
    # --seeds / --rows select; a kept row brings its base and its comparator
    some = merge_results([tmp_path / "early", tmp_path / "late"], tmp_path / "some", rows=["tc2"], seeds=[1, 3])
    assert [row["label"] for row in some["rows"]] == ["none", "tc2", "none@tc2"] and some["seeds"] == [1, 3]
    assert some["paired"]["tc2"]["average"]["differences"] == pytest.approx(
        [runs["tc2"][s]["metrics"]["average"] - runs["none"][s]["metrics"]["average"] for s in "13"])


def test_a_folder_of_another_base_method_becomes_that_methods_rows(tmp_path):
    simclr = all_runs(ROWS[:2], [0, 1], seed=1)
    byol = all_runs(ROWS, [0, 1], seed=2)
    byol["random_init"] = simclr["random_init"] = {s: record(random.Random(9)) for s in "01"}   # the same runs
    untrained = [Row("random_init", "none", untrained=True)]
    write_benchmark(tmp_path / "simclr", simclr, [0, 1], rows=untrained + ROWS[:2], matches=())
    write_benchmark(tmp_path / "byol", byol, [0, 1], rows=untrained + ROWS, overrides=("method.name=byol",))
    merged = merge_results([tmp_path / "simclr", tmp_path / "byol"], tmp_path / "merged")
    rows = [Row(**{**row, "overrides": tuple(row["overrides"])}) for row in merged["rows"]]
    base = config_mod.load_config((), [])
    expected = method_rows(base, ["none", "tc2"], ["byol"])   # what `--methods byol` names them
    assert rows[3:5] == expected and rows[0].label == "random_init"
    assert rows[5] == Row("byol/none@byol/tc2", "none", ("method.name=byol", "train.epochs=7"), "byol/none",
                          False, False)
    assert merged["equal_compute"] == {"byol/tc2": {**MATCH.as_dict(), "comparator": "byol/none@byol/tc2"}}
    assert merged["paired"]["byol/tc2"]["average"]["differences"] == pytest.approx(
        [byol["tc2"][s]["metrics"]["average"] - byol["none"][s]["metrics"]["average"] for s in "01"])
    assert merged["paired"]["tc2"]["average"]["differences"] == pytest.approx(
        [simclr["tc2"][s]["metrics"]["average"] - simclr["none"][s]["metrics"]["average"] for s in "01"])
    assert merged["config"]["method"]["name"] == "simclr"
    assert relabel("none@none batch=128", "byol") == "byol/none@byol/none batch=128"


def test_merging_refuses_what_would_mix_different_runs_or_conditions(tmp_path):
    runs = all_runs(ROWS, [0, 1, 2])
    write_benchmark(tmp_path / "a", runs, [0, 1])
    other = all_runs(ROWS, [0, 1, 2], seed=5)
    write_benchmark(tmp_path / "b", other, [1, 2])   # seed 1 again, but another run
    with pytest.raises(ConfigError, match=r"row 'none', seed 1: .* hold different runs"):
        merge_results([tmp_path / "a", tmp_path / "b"], tmp_path / "m1")
    write_benchmark(tmp_path / "lr", runs, [2], overrides=("train.lr=0.5",))
    with pytest.raises(ConfigError, match=r"another base config .*train.lr: 0.001 against 0.5"):
        merge_results([tmp_path / "a", tmp_path / "lr"], tmp_path / "m2")
    write_benchmark(tmp_path / "epochs", runs, [2], matches=(ComputeMatch("tc2", "none@tc2", 8, 80.0, 10.0, 8),))
    with pytest.raises(ConfigError, match=r"matched to none@tc2 at 8 epochs .* at 7"):
        merge_results([tmp_path / "a", tmp_path / "epochs"], tmp_path / "m3")
    with pytest.raises(ConfigError, match=r"no run for none seed 2, tc2 seed 2"):
        merge_results([tmp_path / "a"], tmp_path / "m4", seeds=[0, 2])
    with pytest.raises(ConfigError, match=r"--rows: no row 'gessl'"):
        merge_results([tmp_path / "a"], tmp_path / "m5", rows=["gessl"])
    assert not any((tmp_path / f"m{i}").exists() for i in range(1, 6))


def test_merge_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["merge", str(tmp_path / "out"), str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tc2ssl: error: ") and "no benchmark results at" in err and len(err.splitlines()) == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{\"suite\": 1}")
    assert main(["merge", str(tmp_path / "out"), str(tmp_path / "bad")]) == 2
    assert "is not a tc2ssl benchmark results file" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore")
def test_the_committed_byol_table_is_its_simclr_and_byol_runs_merged(tmp_path):
    """The committed colored_mnist BYOL table (one `--methods byol` invocation) equals the merge of the committed
    SimCLR rows of the 5-seed folder and its own BYOL rows: the merge recomputes the same statistics."""
    byol = json.loads((STANDARD / "colored_mnist_byol" / "results.json").read_text())
    merged = merge_results([STANDARD / "colored_mnist_all_rows_5seeds", STANDARD / "colored_mnist_byol"],
                           tmp_path / "merged", rows=[row["label"] for row in byol["rows"]], seeds=byol["seeds"])
    assert sorted(row["label"] for row in merged["rows"]) == sorted(row["label"] for row in byol["rows"])
    for key in ("summary", "paired", "paired_compute", "equal_compute", "curves", "time_to_baseline"):
        assert merged[key] == byol[key], key
