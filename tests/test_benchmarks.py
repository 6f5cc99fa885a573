"""Smoke test of the benchmark suite (``python -m benchmarks --quick``) and unit tests of its timing logic.

No assertion here is about speed: the machine is shared and noisy. The run
is checked for structure, finite positive timings and consistent verdicts.
"""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import WORKLOADS, parse_args
from benchmarks.core import ERROR, MISSING, OK, Row, Target, evaluate, interleave

ROOT = Path(__file__).resolve().parent.parent
STATUSES = {OK, MISSING, ERROR}
#: Peer rows that must be measured whenever their library is installed: (workload, impl, module).
PEERS = [
    ("nearest", "faiss IndexFlatL2", "faiss"),
    ("nearest", "numpy x @ c.T", "numpy"),
    ("nearest", "scipy vq", "scipy"),
    ("nearest", "vqp 1.14.5 eval forward", "vector_quantize_pytorch"),
    ("kmeans", "sklearn KMeans lloyd", "sklearn"),
    ("kmeans", "faiss Kmeans", "faiss"),
    ("kmeans", "vqp 1.14.5 kmeans", "vector_quantize_pytorch"),
    ("quantizer", "vqp 1.14.5 train fwd+bwd", "vector_quantize_pytorch"),
    ("vqtorch", "vqp 1.14.5 VectorQuantize", "vector_quantize_pytorch"),
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``--quick`` run of every workload in a fresh process; returns (stdout, record, out folder)."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "latest.json") as handle:
        return done.stdout, json.load(handle), out


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run_writes_stamped_and_latest_json(quick_run):
    _, record, out = quick_run
    stamped = [path for path in out.glob("*.json") if path.name != "latest.json"]
    assert len(stamped) == 1
    assert json.loads(stamped[0].read_text()) == record
    assert record["schema"] == 1 and record["quick"] is True and record["repeat"] == 2


def test_quick_run_records_machine_threads_and_versions(quick_run):
    environment = quick_run[1]["environment"]
    assert environment["cpu_model"] and environment["cpu_count"] >= 1
    assert environment["threads_requested"] == 2
    threads = environment["threads"]
    assert 1 <= threads["numba"] <= 2
    assert threads["threadpoolctl"] and all(info["num_threads"] <= 2 for info in threads["threadpoolctl"])
    assert environment["versions"]["numpy"] and environment["versions"]["numba"]


def test_quick_run_covers_every_workload(quick_run):
    stdout, record, _ = quick_run
    assert {case["workload"] for case in record["cases"]} == set(WORKLOADS)
    for case in record["cases"]:
        assert f"[{case['workload']}] {case['case']}" in stdout
        # summaries (the residual workload's error-against-bits curve) carry notes instead of rows
        assert case["rows"] or case["notes"], f"{case['case']} has no rows"


def test_quick_run_timings_are_finite_positive_bests(quick_run):
    for case in quick_run[1]["cases"]:
        for row in case["rows"]:
            assert row["status"] in STATUSES, row
            if row["status"] != OK:
                assert row["note"], f"{row['impl']} is {row['status']} without a reason"
                continue
            if row["seconds"] is None:  # memory rows report bytes, not time
                assert row["extra"], row
                continue
            assert _positive(row["seconds"]), row
            assert row["runs"] and all(_positive(run) for run in row["runs"]), row
            assert row["seconds"] == min(row["runs"])
            assert row["warmup"] is None or _positive(row["warmup"])


@pytest.mark.parametrize("workload, impl, module", PEERS)
def test_quick_run_measures_installed_peers(quick_run, workload, impl, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    rows = [row for case in quick_run[1]["cases"] if case["workload"] == workload
            for row in case["rows"] if row["impl"] == impl]
    assert rows, f"no {impl} row in {workload}"
    assert all(row["status"] == OK for row in rows), rows


def test_quick_run_results_agree_with_the_reference(quick_run):
    # The nearest workload checks every implementation's indices against an exact reference.
    for case in quick_run[1]["cases"]:
        if case["workload"] == "nearest":
            for row in case["rows"]:
                if row["status"] == OK and "agree" in row["extra"]:
                    assert row["extra"]["agree"] >= 0.999, row


def test_quick_run_verdicts_follow_values(quick_run):
    for case in quick_run[1]["cases"]:
        for target in case["targets"]:
            if target["value"] is None:
                assert target["passed"] is None and target["note"], target
                continue
            assert math.isfinite(target["value"])
            if target["key"] is None:  # time or time ratio (memory growth may be slightly negative)
                assert target["value"] > 0, target
            if target["limit"] is None:
                assert target["passed"] is None
            else:
                assert target["passed"] == (target["value"] <= target["limit"])


class Clock:
    """A fake clock that each recorded call advances by its scripted duration."""

    def __init__(self):
        self.now, self.order = 0.0, []

    def __call__(self):
        return self.now

    def call(self, name, seconds):
        def run():
            self.order.append(name)
            self.now += seconds.pop(0)
        return run


def test_interleave_alternates_calls_and_keeps_every_run():
    clock = Clock()
    calls = [clock.call("a", [2.0, 1.0, 3.0]), clock.call("b", [5.0, 4.0, 6.0])]
    runs, failures = interleave(calls, 3, [0.0, 0.0], clock=clock)
    assert clock.order == ["a", "b"] * 3
    assert runs == [[2.0, 1.0, 3.0], [5.0, 4.0, 6.0]] and failures == {}


def test_interleave_stops_repeating_a_call_past_its_budget():
    clock = Clock()
    calls = [clock.call("slow", [4.0] * 5), clock.call("fast", [1.0] * 5)]
    runs, _ = interleave(calls, 5, [4.0, 1.0], budget_s=6.0, clock=clock)
    # slow: 4 s warm-up + one 4 s run exceeds 6 s, so it runs once; fast stays within budget.
    assert runs == [[4.0], [1.0] * 5]


def test_interleave_drops_a_failing_call_and_goes_on():
    clock = Clock()

    def broken():
        raise RuntimeError("kernel exploded")

    runs, failures = interleave([broken, clock.call("ok", [1.0, 1.0])], 2, [0.0, 0.0], clock=clock)
    assert runs == [[], [1.0, 1.0]]
    assert list(failures) == [0] and "exploded" in str(failures[0])


def test_interleave_calls_the_hook_before_every_call():
    clock, hooks = Clock(), []
    interleave([clock.call("a", [1.0, 1.0])], 2, [0.0], clock=clock, before=lambda: hooks.append(clock.now))
    assert hooks == [0.0, 1.0]


def test_interleave_bursts_time_each_call_and_settle_once_per_turn():
    clock, hooks = Clock(), []
    calls = [clock.call("a", [3.0, 1.0, 2.0, 2.0]), clock.call("b", [5.0, 4.0, 6.0, 4.0])]
    runs, _ = interleave(calls, 2, [0.0, 0.0], clock=clock, before=lambda: hooks.append(clock.now), burst=2)
    assert clock.order == ["a", "a", "b", "b"] * 2
    assert runs == [[3.0, 1.0, 2.0, 2.0], [5.0, 4.0, 6.0, 4.0]]
    assert len(hooks) == 4


def test_interleave_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeat=0"):
        interleave([lambda: None], 0, [0.0])


def test_evaluate_ratio_absolute_and_missing():
    rows = [Row("ours", seconds=0.3), Row("peer", seconds=0.4), Row("gone", MISSING), Row("mem", extra={"mib": 3.0})]
    ratio = evaluate(Target("ours", "peer", 1.0), rows)
    assert ratio.value == pytest.approx(0.75) and ratio.passed is True
    assert evaluate(Target("ours", "peer", 0.5), rows).passed is False
    absolute = evaluate(Target("mem", None, 2.0, key="mib"), rows)
    assert absolute.value == 3.0 and absolute.passed is False
    missing = evaluate(Target("ours", "gone", 1.0), rows)
    assert missing.value is None and missing.passed is None and "gone" in missing.note
    info = evaluate(Target("peer", "ours", None), rows)
    assert info.value == pytest.approx(4 / 3) and info.passed is None


def test_unknown_workload_is_rejected_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--only", "nearest,bogus"])
    assert exit_info.value.code == 2
    assert "bogus" in capsys.readouterr().err


def test_cuda_benchmark_refuses_to_run_without_a_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the benchmark would run")
    from benchmarks import cuda

    with pytest.raises(SystemExit, match="needs a GPU"):
        cuda.main(["--quick"])
    labels = [case[0] for case in cuda.FULL]
    assert len(labels) == len(set(labels)) and any("2^16" in label for label in labels)


def test_cuda_benchmark_script_runs_on_cpu():
    """The GPU benchmark's code runs in CI through ``--device cpu``: every quick case times both libraries."""
    pytest.importorskip("vector_quantize_pytorch")
    from benchmarks import cuda

    rows = cuda.main(["--quick", "--device", "cpu", "--repeat", "1"])
    assert len(rows) == sum(len(case[4]) for case in cuda.QUICK)
    for row in rows:
        assert row["seed_ms"] > 0 and row["vqtorch_ms"] > 0 and row["ratio"] > 0, row
        assert "seed_peak_mib" not in row  # GPU memory only
