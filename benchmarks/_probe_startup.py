"""Child process for the start-up workload; prints one JSON line.

``python -m benchmarks._probe_startup import``: seconds to ``import vqcore``
in a fresh interpreter (numpy and numba included, as a user pays for them).

``python -m benchmarks._probe_startup first_calls``: seconds of the first call
of each public kernel on tiny inputs. Run twice; the second run finds the
JIT cache filled by the first and measures what a user sees from then on.

Nothing heavy is imported at module level: it would be counted as import time.
"""
from __future__ import annotations

import json
import sys
import time


def time_import() -> dict:
    start = time.perf_counter()
    import vqcore  # noqa: F401  (the import is what is timed)
    seconds = time.perf_counter() - start
    return {"status": "ok", "import_s": seconds, "torch_imported": "torch" in sys.modules}


def _first_calls(vqcore, np) -> dict:
    """Name -> zero-argument call, each on inputs small enough that compile/load time dominates."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16), dtype=np.float32)
    codebook = x[:8].copy()
    batched_x, batched_codebook = x.reshape(2, 100, 16), np.stack([codebook, codebook])
    state = {}

    def partial_fit():
        state["quantizer"] = vqcore.VectorQuantizer(16, 8, seed=0)
        return state["quantizer"].partial_fit(x)

    return {
        "nearest": lambda: vqcore.nearest(x, codebook),
        "nearest cosine": lambda: vqcore.nearest(x, codebook, metric="cosine"),
        "nearest float64": lambda: vqcore.nearest(x.astype(np.float64), codebook.astype(np.float64)),
        "nearest batched": lambda: vqcore.nearest(batched_x, batched_codebook),
        "distances": lambda: vqcore.distances(x, codebook),
        "kmeans": lambda: vqcore.kmeans(x, 8, iters=2, seed=0),
        "sample_vectors": lambda: vqcore.sample_vectors(x, 8, rng),
        "sample_multinomial": lambda: vqcore.sample_multinomial(100, np.full(4, 0.25), rng),
        "gumbel_sample": lambda: vqcore.gumbel_sample(x[:, :8], rng=rng),
        "VectorQuantizer.partial_fit": partial_fit,
        "VectorQuantizer.encode": lambda: state["quantizer"].encode(x),
    }


#: The public name each call needs; a missing one makes the call "not available".
_NEEDS = {
    "distances": "distances", "kmeans": "kmeans", "sample_vectors": "sample_vectors",
    "sample_multinomial": "sample_multinomial", "gumbel_sample": "gumbel_sample",
    "VectorQuantizer.partial_fit": "VectorQuantizer", "VectorQuantizer.encode": "VectorQuantizer",
}


def time_first_calls() -> dict:
    import numba
    import numpy as np

    import vqcore

    results = {}
    for name, call in _first_calls(vqcore, np).items():
        needed = _NEEDS.get(name, "nearest")
        if not hasattr(vqcore, needed):
            results[name] = {"status": "not available", "reason": f"vqcore.{needed} does not exist yet"}
            continue
        start = time.perf_counter()
        try:
            call()
        except Exception as exc:  # report and go on: later kernels are still worth timing
            results[name] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
            continue
        results[name] = {"status": "ok", "seconds": time.perf_counter() - start}
    return {"status": "ok", "calls": results, "numba_cache_dir": numba.config.CACHE_DIR or None}


def main(mode: str) -> None:
    try:
        result = {"import": time_import, "first_calls": time_first_calls}[mode]()
    except ImportError as exc:
        result = {"status": "not available", "reason": f"vqcore cannot be imported ({exc})"}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
