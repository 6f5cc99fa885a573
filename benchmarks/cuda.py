"""vqtorch against the seed (vector-quantize-pytorch 1.14.5) on a CUDA GPU: time and peak GPU memory.

Run where torch sees a GPU: ``python -m benchmarks.cuda [--quick] [--repeat N] [--json FILE]``.
CI has no GPU, so this is not part of ``python -m benchmarks``; its numbers go in the README by hand.
``--device cpu`` runs the same cases on CPU (wall-clock timing, no memory column): how the test
suite checks that the script still runs.

Every case builds the seed's module and ours from the same state (``load_state_dict``, strict) and
times one call: a training step (forward + backward, EMA updates included) or an eval forward.
Timing uses CUDA events around bursts of calls, alternating the two libraries, and reports the
median per call.  Peak memory is ``torch.cuda.max_memory_allocated`` during one call, above what
was allocated before it (the inputs, the modules).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import vector_quantize_pytorch as seed

import vqtorch

MIB = 2.0 ** 20
BURST = 5  # calls per timed burst: each call is ~1 ms or more, so event overhead is small


def _vq(lib, d, k):
    return lib.VectorQuantize(dim=d, codebook_size=k)


def _rvq(lib, d, k, q):
    return lib.ResidualVQ(dim=d, codebook_size=k, num_quantizers=q)


def _fsq(lib, dim):
    return lib.FSQ([8, 5, 5, 5], dim=dim)


def _lfq(lib, d, k):
    return lib.LFQ(dim=d, codebook_size=k)


def _vq_loss(out):
    quantized, _, loss = out
    return quantized.sum() + loss.sum()


def _fsq_loss(out):
    return out[0].sum()


def _lfq_loss(out):
    quantized, _, aux = out
    return quantized.sum() + aux


FULL = [
    # (label, builder, input shape, loss, modes)
    ("VectorQuantize d=256 k=1024", lambda lib: _vq(lib, 256, 1024), (16, 1024, 256), _vq_loss, ("train", "eval")),
    ("VectorQuantize d=256 k=8192", lambda lib: _vq(lib, 256, 8192), (16, 1024, 256), _vq_loss, ("train", "eval")),
    ("ResidualVQ d=256 k=1024 q=8", lambda lib: _rvq(lib, 256, 1024, 8), (16, 1024, 256), _vq_loss,
     ("train", "eval")),
    ("FSQ [8,5,5,5]", lambda lib: _fsq(lib, None), (16, 1024, 4), _fsq_loss, ("train",)),
    ("FSQ [8,5,5,5] dim=256", lambda lib: _fsq(lib, 256), (16, 1024, 256), _fsq_loss, ("train",)),
    ("LFQ d=256 k=2^10", lambda lib: _lfq(lib, 256, 2 ** 10), (16, 1024, 256), _lfq_loss, ("train",)),
    ("LFQ d=256 k=2^16", lambda lib: _lfq(lib, 256, 2 ** 16), (16, 1024, 256), _lfq_loss, ("train",)),
]
QUICK = [
    ("VectorQuantize d=64 k=512", lambda lib: _vq(lib, 64, 512), (2, 256, 64), _vq_loss, ("train", "eval")),
    ("ResidualVQ d=64 k=128 q=3", lambda lib: _rvq(lib, 64, 128, 3), (2, 256, 64), _vq_loss, ("train",)),
    ("FSQ [8,5,5,5] dim=32", lambda lib: _fsq(lib, 32), (2, 256, 32), _fsq_loss, ("train",)),
    ("LFQ d=32 k=2^8", lambda lib: _lfq(lib, 32, 2 ** 8), (2, 128, 32), _lfq_loss, ("train",)),
]


def _pair(build, device):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = build(seed).to(device)
    ours = build(vqtorch).to(device)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return {"seed": theirs, "vqtorch": ours}


def _call(module, x, loss_fn, mode):
    """One training step (forward + backward on a fresh leaf) or one eval forward without autograd."""
    if mode == "eval":
        with torch.no_grad():
            return module(x)
    leaf = x.detach().requires_grad_()
    loss_fn(module(leaf)).backward()
    return leaf.grad


def _peak_mib(module, x, loss_fn, mode):
    """GPU memory one call allocates at its peak, above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    _call(module, x, loss_fn, mode)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / MIB


def _burst_ms(module, x, loss_fn, mode, on_cuda):
    """Milliseconds per call over one burst: CUDA events on a GPU, the wall clock elsewhere."""
    if not on_cuda:
        start = time.perf_counter()
        for _ in range(BURST):
            _call(module, x, loss_fn, mode)
        return (time.perf_counter() - start) * 1e3 / BURST
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(BURST):
        _call(module, x, loss_fn, mode)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / BURST


def _time_ms(modules, x, loss_fn, mode, repeat, on_cuda):
    """Median milliseconds per call of each module, bursts alternating between them."""
    times = {name: [] for name in modules}
    for _ in range(repeat):
        for name, module in modules.items():
            times[name].append(_burst_ms(module, x, loss_fn, mode, on_cuda))
    return {name: statistics.median(t) for name, t in times.items()}


def run_case(label, build, shape, loss_fn, mode, repeat, device="cuda"):
    """One row: each library's median time and peak memory (or the error that stopped it)."""
    on_cuda = torch.device(device).type == "cuda"
    row = {"case": f"{label} {mode}", "shape": list(shape)}
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    modules, failed = _pair(build, device), {}
    for name, module in modules.items():
        module.train(mode == "train")
        try:
            for _ in range(3):  # warm-up: k-means init, caches, cuBLAS handles
                _call(module, x, loss_fn, mode)
            if on_cuda:
                row[f"{name}_peak_mib"] = round(_peak_mib(module, x, loss_fn, mode), 1)
        except torch.cuda.OutOfMemoryError as exc:
            failed[name] = f"out of memory ({str(exc).splitlines()[0][:80]})"
    for name in failed:
        modules.pop(name)
        torch.cuda.empty_cache()
    if modules:
        try:
            for name, ms in _time_ms(modules, x, loss_fn, mode, repeat, on_cuda).items():
                row[f"{name}_ms"] = round(ms, 3)
        except torch.cuda.OutOfMemoryError as exc:  # memory left over between calls: the row says so
            row["timing_error"] = f"out of memory while timing ({str(exc).splitlines()[0][:80]})"
    row.update({f"{name}_error": error for name, error in failed.items()})
    if "seed_ms" in row and "vqtorch_ms" in row:
        row["ratio"] = round(row["vqtorch_ms"] / row["seed_ms"], 3)
    del modules, x
    if on_cuda:
        torch.cuda.empty_cache()
    return row


def _cell(row, key, fmt):
    return fmt.format(row[key]) if key in row else row.get(key.split("_")[0] + "_error", "-")


def main(argv=None):
    """Run the cases and print a markdown table; returns the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes: checks the script, not the speed")
    parser.add_argument("--repeat", type=int, default=7, help="timed bursts per library and case")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda; cpu checks the script)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    on_cuda = torch.device(args.device).type == "cuda"
    if on_cuda and not torch.cuda.is_available():
        sys.exit("benchmarks.cuda needs a GPU that torch can see (or --device cpu to check the script)")
    name = torch.cuda.get_device_name() if on_cuda else args.device
    print(f"# {name}, torch {torch.__version__}, allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    print("| case | seed ms | vqtorch ms | ratio | seed peak MiB | vqtorch peak MiB |")
    print("|---|---|---|---|---|---|")
    rows = []
    for label, build, shape, loss_fn, modes in (QUICK if args.quick else FULL):
        for mode in modes:
            row = run_case(label, build, shape, loss_fn, mode, args.repeat, args.device)
            rows.append(row)
            print(f"| {row['case']} {tuple(shape)} | {_cell(row, 'seed_ms', '{:.3f}')} | "
                  f"{_cell(row, 'vqtorch_ms', '{:.3f}')} | {_cell(row, 'ratio', '{:.2f}x')} | "
                  f"{_cell(row, 'seed_peak_mib', '{:.0f}')} | {_cell(row, 'vqtorch_peak_mib', '{:.0f}')} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
