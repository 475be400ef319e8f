"""The cross-suite overview: one panel per suite, rows of several folders kept apart."""
from __future__ import annotations

import json

from tc2ssl.benchmarks.summary import load_results, main, overview_panels, summary_markdown


def fake_result(suite: str, rows: dict[str, float], seeds=(0, 1, 2)) -> dict:
    """A results.json with rows paired against none; ``rows``: label -> paired mean difference."""
    return {"suite": suite, "preset": "cpu", "primary": "average", "seeds": list(seeds),
            "rows": [{"label": "none", "baseline": "none"}] + [{"label": k, "baseline": "none"} for k in rows],
            "summary": {label: {"average": {"mean": 0.5}} for label in ["none", *rows]},
            "paired": {label: {"average": {"mean": d, "ci_low": d - 0.01, "ci_high": d + 0.01}}
                       for label, d in rows.items()}}


def test_folders_of_one_suite_share_a_panel_and_repeated_rows_name_their_folder(tmp_path):
    for folder, result in (("controls", fake_result("colored_mnist", {"tc2": 0.03, "tc2_frozen": 0.02})),
                           ("calibrated", fake_result("colored_mnist", {"tc2": 0.01}, seeds=range(5))),
                           ("pacs", fake_result("pacs", {"gessl": -0.02}))):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "results.json").write_text(json.dumps(result))
    results = load_results([tmp_path / f for f in ("controls", "calibrated", "pacs")])
    panels = overview_panels(results)
    assert list(panels) == ["colored_mnist", "pacs"]
    assert [label for label, _ in panels["colored_mnist"]] == [
        "tc2 vs none (3 seeds) [controls]", "tc2_frozen vs none (3 seeds)", "tc2 vs none (5 seeds) [calibrated]"]
    assert "| pacs (average) | cpu, 3 | gessl | 50.00 | -2.00 [-3.00, -1.00] vs none |" in summary_markdown(results)
    png = tmp_path / "overview.png"
    assert main([str(tmp_path / f) for f in ("controls", "calibrated", "pacs")] + ["--png", str(png)]) == 0
    assert png.stat().st_size > 5000


def test_two_folders_of_one_name_are_told_apart_by_their_path(tmp_path):
    for folder, delta in (("pacs", 0.01), ("controls/pacs", -0.01)):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "results.json").write_text(json.dumps(fake_result("pacs", {"tc2": delta})))
    panels = overview_panels(load_results([tmp_path / "pacs", tmp_path / "controls" / "pacs"]))
    assert [label for label, _ in panels["pacs"]] == ["tc2 vs none (3 seeds) [pacs]",
                                                      "tc2 vs none (3 seeds) [controls/pacs]"]


def test_a_row_that_two_folders_share_is_listed_once():
    """A folder run with ``--methods byol`` also reports the SimCLR rows of the main folder: the same runs (same
    seeds, same per-seed values, same comparisons) are one measurement, listed once; a row that differs is kept."""
    main_folder = fake_result("cifar10_subset", {"tc2": -0.01, "gessl": -0.05})
    byol_folder = fake_result("cifar10_subset", {"tc2": -0.01, "byol/tc2": 0.003})
    byol_folder["rows"][-1]["baseline"] = "byol/none"
    for result in (main_folder, byol_folder):
        result["runs"] = {label: {str(s): {"metrics": {"average": 0.4 + 0.01 * s}} for s in result["seeds"]}
                          for label in result["summary"]}
    rerun = fake_result("cifar10_subset", {"tc2": -0.01})            # the same label from other runs
    rerun["runs"] = {label: {str(s): {"metrics": {"average": 0.3}} for s in rerun["seeds"]}
                     for label in rerun["summary"]}
    table = summary_markdown([main_folder, byol_folder, rerun])
    assert table.count("| tc2 |") == 2                                # main folder's once, the other runs' once
    assert table.count("| gessl |") == 1 and table.count("| byol/tc2 |") == 1
    labels = [label for label, _ in overview_panels([main_folder, byol_folder])["cifar10_subset"]]
    assert labels == ["tc2 vs none (3 seeds)", "gessl vs none (3 seeds)", "byol/tc2 vs byol/none (3 seeds)"]


def test_a_row_whose_runs_another_folder_holds_at_more_seeds_is_listed_once_with_the_more_seeds():
    """A 3-seed folder's tc2 runs are the first 3 of a 5-seed folder's: the 5-seed row is the measurement; a 3-seed
    row of other runs (different values on a shared seed) is kept."""
    def with_runs(result: dict, value) -> dict:
        result["runs"] = {label: {str(s): {"metrics": {"average": value(label, s)}} for s in result["seeds"]}
                          for label in result["summary"]}
        return result

    five = with_runs(fake_result("pacs", {"tc2": -0.01}, seeds=range(5)), lambda label, s: 0.4 + 0.01 * s)
    three = with_runs(fake_result("pacs", {"tc2": -0.02, "byol/tc2": 0.01}), lambda label, s: 0.4 + 0.01 * s)
    other = with_runs(fake_result("pacs", {"tc2": -0.02}), lambda label, s: 0.3)
    for name, result in (("five", five), ("three", three), ("other", other)):
        result["folder"] = name
    labels = [label for label, _ in overview_panels([three, five, other])["pacs"]]
    assert labels == ["byol/tc2 vs none (3 seeds)", "tc2 vs none (5 seeds) [five]", "tc2 vs none (3 seeds) [other]"]
    assert summary_markdown([three, five]).count("| tc2 |") == 1
