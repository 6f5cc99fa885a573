"""FSQ and LFQ (issue 16): vqtorch's layers against the seed's, forward + backward, and LFQ's peak memory.

Times: FSQ levels [8, 5, 5, 5] on (16, 1024, 4) and with dim=256 projections; LFQ dim=256 on
(16, 1024, 256) at codebook_size 2**10, and at 2**16 on (1, 1024, 256), the largest input
whose (tokens, codebook_size) matrices the seed can hold here (at (16, 1024, 256) each is 4 GiB).

Memory: peak resident growth of one LFQ forward + backward at 2**16, each in a fresh process
(``python -m benchmarks.wl_fsq_lfq probe IMPL K BATCH THREADS``, tracemalloc does not see torch's
allocations). Ours at two batch sizes must not grow with tokens x codebook_size; the seed runs
under an address-space limit so that its 2**16 x 16,384-token attempt fails cleanly.
"""
from __future__ import annotations

import gc
import json
import resource
import sys

import numpy as np

from .child import run_probe
from .core import ERROR, MISSING, OK, Case, Config, Impl, Row, Target, Unavailable, evaluate, run_case
from .environment import apply_threads
from .peers import gaussian, require

NAME = "fsq_lfq"
DESCRIPTION = "FSQ and LFQ forward+backward (vqtorch vs the seed) and LFQ peak memory at codebook_size 2**16"

FULL = {
    "fsq": [((16, 1024, 4), None), ((16, 1024, 256), 256)],
    "lfq": [((16, 1024, 256), 2 ** 10), ((1, 1024, 256), 2 ** 16)],
    "memory": {"k": 2 ** 16, "batches": (4, 16), "seed_batches": (1, 16), "n": 1024, "dim": 256},
}
QUICK = {
    "fsq": [((2, 256, 4), None), ((2, 256, 32), 32)],
    "lfq": [((2, 128, 32), 2 ** 4), ((1, 128, 32), 2 ** 8)],
    "memory": {"k": 2 ** 8, "batches": (1, 2), "seed_batches": (1,), "n": 128, "dim": 32},
}
LEVELS = [8, 5, 5, 5]
PROBE_MODULE = "wl_fsq_lfq"  # this file, run as a child process for the memory probes
SEED = "vqp 1.14.5"
OURS = "vqtorch"
FLOOR = "projections only"  # a reference row, not a library
TIME_TARGET = 0.5
MIB = 2.0 ** 20
#: Address space allowed to a seed memory probe: its full-size attempt fails instead of swapping.
SEED_ADDRESS_LIMIT = 6 * 2 ** 30
#: Growth of our extra memory between the two batch sizes (allocator noise, far below tokens x k floats).
GROWTH_LIMIT_MIB = 64.0


def run(config: Config) -> list[Case]:
    """FSQ and LFQ timing cases, then the LFQ memory case."""
    params = QUICK if config.quick else FULL
    cases = [_fsq_case(shape, dim, config) for shape, dim in params["fsq"]]
    cases += [_lfq_case(shape, k, config) for shape, k in params["lfq"]]
    cases.append(_memory_case(params["memory"], config.threads))
    return cases


# -- timing ---------------------------------------------------------------------------------------

def _fsq_case(shape, dim, config):
    label = f"FSQ {LEVELS} fwd+bwd x={shape}" + (f" dim={dim} (projections)" if dim else "")
    case = Case(NAME, label, {"shape": list(shape), "levels": LEVELS, "dim": dim, "dtype": "float32"},
                targets=[Target(OURS, SEED, TIME_TARGET)])
    x = gaussian(np.random.default_rng(0), *shape)
    impls = [Impl(name, lambda module=module: _train_step(_fsq(module, dim), x, _fsq_loss))
             for name, module in ((SEED, "vector_quantize_pytorch"), (OURS, "vqtorch"))]
    if dim:
        case.notes.append(f"the seed runs its projections as nn.Linear GEMMs of inner or outer size "
                          f"{len(LEVELS)}; vqtorch fuses them with the bound into one pass over the rows each "
                          f"way. The '{FLOOR}' row times the two nn.Linear around a tanh: the seed's floor")
        impls.append(Impl(FLOOR, lambda: _train_step(_projections_only(dim), x, _floor_loss)))
    return run_case(case, impls, config.repeat, config.budget_s, config.threads)


def _projections_only(dim):
    """The projections of ``FSQ(LEVELS, dim=dim)`` as ``nn.Linear`` calls around a tanh: the seed's floor."""
    layer = _fsq("vqtorch", dim)
    return lambda leaf: layer.project_out(layer.project_in(leaf).tanh())


def _floor_loss(layer, leaf):
    return layer(leaf).sum()


def _lfq_case(shape, k, config):
    dim = shape[-1]
    case = Case(NAME, f"LFQ fwd+bwd x={shape} dim={dim} codebook_size={k}",
                {"shape": list(shape), "codebook_size": k, "dim": dim, "dtype": "float32"},
                targets=[Target(OURS, SEED, TIME_TARGET)])
    x = gaussian(np.random.default_rng(0), *shape)
    impls = [Impl(name, lambda module=module: _train_step(_lfq(module, dim, k), x, _lfq_loss))
             for name, module in ((SEED, "vector_quantize_pytorch"), (OURS, "vqtorch"))]
    return run_case(case, impls, config.repeat, config.budget_s, config.threads)


def _fsq(module, dim):
    torch = require("torch")
    torch.manual_seed(0)  # the same projections for both libraries
    return require(module, "FSQ")(LEVELS, dim=dim).train()


def _lfq(module, dim, k):
    torch = require("torch")
    torch.manual_seed(0)
    return require(module, "LFQ")(dim=dim, codebook_size=k).train()


def _fsq_loss(layer, leaf):
    out, _ = layer(leaf)
    return out.sum()


def _lfq_loss(layer, leaf):
    out, _, aux_loss = layer(leaf)
    return out.sum() + aux_loss


def _train_step(layer, x, loss_fn):
    """A closure: one forward + backward on a fresh leaf of ``x`` (the gradient is the work)."""
    torch = require("torch")
    inputs = torch.from_numpy(x)

    def step():
        leaf = inputs.detach().requires_grad_()
        loss_fn(layer, leaf).backward()
        return leaf.grad
    return step


# -- memory (child processes) ---------------------------------------------------------------------

def _memory_case(params, threads):
    k, n, dim = params["k"], params["n"], params["dim"]
    case = Case(NAME, f"LFQ peak memory fwd+bwd codebook_size={k} x=(b, {n}, {dim})",
                {**params, "dtype": "float32"})
    ours = [_memory_row(OURS, k, b, n, dim, threads) for b in params["batches"]]
    small, large = ours[0], ours[-1]
    if small.status == OK and large.status == OK:
        large.extra["extra_growth_MiB"] = large.extra["extra_MiB"] - small.extra["extra_MiB"]
    case.rows.extend(ours)
    case.rows.extend(_memory_row(SEED, k, b, n, dim, threads) for b in params["seed_batches"])
    tokens = params["batches"][-1] * n
    case.targets = [
        evaluate(Target(large.impl, None, GROWTH_LIMIT_MIB, key="extra_growth_MiB", unit=" MiB",
                        note=f"extra memory from batch {params['batches'][0]} to {params['batches'][-1]}"),
                 case.rows),
        evaluate(Target(large.impl, None, None, key="extra_MiB", unit=" MiB",
                        note=f"for scale: one tokens x codebook_size float32 matrix is "
                             f"{tokens * k * 4 / MIB:.0f} MiB"), case.rows),
    ]
    return case


def _memory_row(impl, k, batch, n, dim, threads):
    answer = run_probe(PROBE_MODULE, "probe", impl, k, batch, n, dim, threads)
    row = Row(impl=f"{impl} batch={batch}")
    if answer.get("status") == "not available":
        row.status, row.note = MISSING, answer.get("reason", "")
    elif answer.get("status") != "ok":
        row.status, row.note = ERROR, answer.get("reason", "no answer")
    else:
        row.note = answer["method"]  # a memory row: bytes, not a timing (one probe run, in a child process)
        row.extra = {"extra_MiB": answer["extra_bytes"] / MIB, "peak_growth_MiB": answer["peak_growth_bytes"] / MIB,
                     "probe_s": answer["seconds"]}
    return row


def probe(impl, k, batch, n, dim, threads):
    """Peak RSS growth of one LFQ forward + backward, above the inputs and the returned gradient."""
    import time

    from ._probe_memory import _peak_kib, _reset_peak, _status_kib

    if impl == SEED:
        resource.setrlimit(resource.RLIMIT_AS, (SEED_ADDRESS_LIMIT, SEED_ADDRESS_LIMIT))
    module = {SEED: "vector_quantize_pytorch", OURS: "vqtorch"}[impl]
    apply_threads(threads)
    layer = _lfq(module, dim, k)
    x = gaussian(np.random.default_rng(0), batch, n, dim)
    step = _train_step(layer, x[:1, : min(n, 64)], _lfq_loss)
    step()  # warm-up on a slice: lazy initialisation is not the layer's working memory
    step = _train_step(layer, x, _lfq_loss)
    gc.collect()
    method = _reset_peak()
    before = _status_kib("VmRSS") * 1024
    start = time.perf_counter()
    try:
        grad = step()
    except (RuntimeError, MemoryError) as exc:
        limit = SEED_ADDRESS_LIMIT / 2 ** 30 if impl == SEED else None
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return {"status": "error", "reason": f"out of memory (address limit {limit:g} GiB): {reason}" if limit
                else reason}
    seconds = time.perf_counter() - start
    peak = _peak_kib(method) * 1024
    return {"status": "ok", "method": method, "seconds": seconds, "rss_before_bytes": before,
            "peak_growth_bytes": peak - before, "extra_bytes": peak - before - grad.numel() * 4}


def main(argv):
    """``probe IMPL K BATCH N DIM THREADS``: print one JSON line."""
    if not argv or argv[0] != "probe":
        raise SystemExit("usage: python -m benchmarks.wl_fsq_lfq probe IMPL K BATCH N DIM THREADS")
    impl, k, batch, n, dim, threads = argv[1], *map(int, argv[2:7])
    try:
        result = probe(impl, k, batch, n, dim, threads)
    except Unavailable as exc:
        result = {"status": "not available", "reason": str(exc)}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
