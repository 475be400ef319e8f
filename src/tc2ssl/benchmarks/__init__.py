"""``tc2ssl benchmark SUITE``: transfer and out-of-distribution suites on real data (D-BM-01), each plug-in
over the same seeds, with mean ± std and paired differences against the baseline."""
from tc2ssl.benchmarks.presets import PRESETS, BenchmarkPreset, get_preset
from tc2ssl.benchmarks.suites import SUITES, Suite, parse_seeds, run_benchmark

__all__ = ["PRESETS", "SUITES", "BenchmarkPreset", "Suite", "get_preset", "parse_seeds", "run_benchmark"]
