"""Timing, result records and target checks shared by every workload.

A workload builds a list of :class:`Impl` (one per library) and a list of
:class:`Target`; :func:`run_case` warms every implementation up, times them
in interleaved rounds (best of ``repeat``) and evaluates the targets.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .environment import apply_threads, thread_snapshot

#: Status of a row whose timing succeeded.
OK = "ok"
#: Status of a row whose implementation is missing from this environment.
MISSING = "not available"
#: Status of a row whose implementation raised while being set up or timed.
ERROR = "error"


class Unavailable(Exception):
    """Raised by an implementation's setup when its code is not installed or not written yet."""


@dataclass
class Row:
    """One implementation's measurement within a case."""

    impl: str
    status: str = OK
    seconds: float | None = None
    runs: list[float] = field(default_factory=list)
    warmup: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    """A goal from the issues: ``value(ours) / value(peer) <= limit``, or ``value(ours) <= limit``.

    ``peer=None`` makes the target absolute (e.g. seconds or bytes); ``limit=None``
    makes it informational (the ratio is reported, nothing passes or fails).
    ``key=None`` compares the rows' ``seconds``; otherwise the named ``extra`` entry.
    """

    ours: str
    peer: str | None
    limit: float | None
    key: str | None = None
    unit: str = "x"
    value: float | None = None
    passed: bool | None = None
    note: str = ""

    def label(self) -> str:
        """Human-readable name of the quantity compared."""
        what = self.key or "time"
        if self.peer is None:
            return f"{self.ours} {what}"
        return f"{self.ours} / {self.peer} {what}"


@dataclass
class Case:
    """The result of one workload at one size."""

    workload: str
    case: str
    params: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    threads: dict[str, Any] = field(default_factory=dict)


@dataclass
class Impl:
    """An implementation to time.

    ``setup`` builds everything outside the timed region and returns the
    zero-argument callable to time; it raises :class:`Unavailable` when the
    library or function is missing. ``inspect`` (optional) receives the
    warm-up call's return value and returns extra numbers for the report
    (e.g. inertia), computed outside the timed region.
    """

    name: str
    setup: Callable[[], Callable[[], Any]]
    inspect: Callable[[Any], dict[str, Any]] | None = None
    note: str = ""


def interleave(calls, repeat, spent, budget_s=math.inf, clock=time.perf_counter, before=None, burst=1):
    """Time already warmed-up calls in rounds: ``burst`` calls of each per round, ``repeat`` rounds.

    Interleaving spreads bursts of load from other processes over all
    implementations instead of penalising whichever ran during the burst, so
    the same-run ratios stay fair on a shared machine. A call stops being
    repeated once its total time (``spent``, warm-up included) exceeds
    ``budget_s``; every call is timed at least once.

    Parameters
    ----------
    calls : list of callable
        Zero-argument functions, each already called once (the warm-up).
    repeat : int
        Maximum number of timed calls of each function.
    spent : list of float
        Seconds already used by each function (its warm-up); not modified.
    budget_s : float
        Soft limit on the total seconds spent on one function.
    clock : callable
        Monotonic clock returning seconds (injectable for tests).
    before : callable, optional
        Called before each function's turn in a round, outside the clock (thread settings).
    burst : int
        Back-to-back timed calls per turn, each timed on its own.

    Returns
    -------
    runs : list of list of float
        Seconds of each timed call, per function; the reported time is the minimum.
    failures : dict
        Index of a function that raised during a timed call -> the exception;
        it is not called again.
    """
    if repeat < 1:
        raise ValueError(f"repeat={repeat} must be >= 1; pass --repeat 1 or more.")
    runs = [[] for _ in calls]
    used = list(spent)
    failures = {}
    for _ in range(repeat):
        for i, call in enumerate(calls):
            if i in failures or (runs[i] and used[i] > budget_s):
                continue
            if before is not None:
                before()
            for _ in range(burst):
                try:
                    start = clock()
                    output = call()
                    runs[i].append(clock() - start)
                    output = None  # freed after the clock stopped: freeing is not the callee's work
                except Exception as exc:  # a failing implementation must not stop the others
                    failures[i] = exc
                    break
                used[i] += runs[i][-1]
    return runs, failures


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _warm_up(impl: Impl, row: Row, threads: int):
    """Set up ``impl`` and call it (twice if quick); returns the call, or None with ``row`` marked."""
    apply_threads(threads)
    try:
        call = impl.setup()
    except Unavailable as exc:
        row.status, row.note = MISSING, str(exc)
        return None
    except Exception as exc:  # a peer or our own code failing must not end the suite
        row.status, row.note = ERROR, f"setup failed: {_describe(exc)}"
        return None
    try:
        start = time.perf_counter()
        output = call()
        row.warmup = time.perf_counter() - start
        if row.warmup < REWARM_S:  # a quick call: once more, without one-time costs (cache loads)
            output = None
            start = time.perf_counter()
            output = call()
            row.warmup = time.perf_counter() - start
        if impl.inspect is not None:
            row.extra.update(impl.inspect(output))
    except Exception as exc:
        row.status, row.note = ERROR, _describe(exc)
        return None
    return call


def evaluate(target: Target, rows: list[Row]) -> Target:
    """Fill ``target.value`` and ``target.passed`` from the rows of a case."""
    by_name = {row.impl: row for row in rows if row.status == OK}

    def quantity(name):
        row = by_name.get(name)
        if row is None:
            return None
        value = row.seconds if target.key is None else row.extra.get(target.key)
        return value if isinstance(value, (int, float)) and math.isfinite(value) else None

    ours = quantity(target.ours)
    if ours is None:
        target.note = target.note or f"{target.ours} not measured"
        return target
    if target.peer is None:
        target.value = float(ours)
    else:
        peer = quantity(target.peer)
        if peer is None or peer <= 0:
            target.note = target.note or f"{target.peer} not measured"
            return target
        target.value = float(ours) / float(peer)
    if target.limit is not None:
        target.passed = target.value <= target.limit
    return target


SETTLE_S = 0.25
#: Warm-up calls shorter than this are repeated once, and the second sets the case's burst.
REWARM_S = 1.0
#: Cases whose every call takes less than this are timed in bursts of :data:`BURST` calls.
SHORT_CALL_S = 0.05
#: Back-to-back calls per turn for short cases: on this VM the first few milliseconds after
#: the settling pause run slowly and erratically (2-18 ms for a 2 ms FSQ step), which would
#: swamp calls of that size; later calls of a burst show what a training loop sees.
BURST = 10


def run_case(case: Case, impls: list[Impl], repeat: int, budget_s: float, threads: int) -> Case:
    """Warm up every implementation of ``case``, time them interleaved, then evaluate the targets."""
    rows = [Row(impl=impl.name, note=impl.note) for impl in impls]
    calls = [_warm_up(impl, row, threads) for impl, row in zip(impls, rows)]
    live = [i for i, call in enumerate(calls) if call is not None]

    # numba's OpenMP pool can reset torch's thread count: re-apply before every call.  Then
    # pause: OpenBLAS and OpenMP workers spin for tens of ms after a call, and would steal
    # the cores from whichever implementation runs next (measured: +60 % on partial_fit
    # right after numpy's GEMM).
    def settle():
        apply_threads(threads)
        time.sleep(SETTLE_S)

    warmups = [rows[i].warmup for i in live]
    burst = BURST if warmups and max(warmups) < SHORT_CALL_S else 1
    if burst > 1:
        case.notes.append(f"every call here is under {SHORT_CALL_S * 1e3:.0f} ms: each turn times {burst} calls "
                          f"back to back (each on its own) after the pause, and the best is kept")
    runs, failures = interleave([calls[i] for i in live], repeat, warmups, budget_s, before=settle, burst=burst)
    for position, i in enumerate(live):
        if position in failures:
            rows[i].status, rows[i].note = ERROR, _describe(failures[position])
        else:
            rows[i].runs = runs[position]
            rows[i].seconds = min(runs[position])
    calls = None
    gc.collect()  # free this case's data and models before the next case allocates its own
    case.rows.extend(rows)
    case.targets = [evaluate(target, case.rows) for target in case.targets]
    case.threads = thread_snapshot()
    return case


@dataclass(frozen=True)
class Config:
    """Options shared by all workloads for one run of the suite."""

    quick: bool
    repeat: int
    threads: int
    budget_s: float

