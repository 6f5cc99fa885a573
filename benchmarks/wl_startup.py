"""Start-up costs (issue 2): ``import vqcore`` and the first call of each kernel with a warm JIT cache."""
from __future__ import annotations

from .child import run_probe
from .core import ERROR, MISSING, OK, Case, Config, Row, Target, evaluate

NAME = "startup"
DESCRIPTION = "import vqcore in a fresh process; first call of each kernel once the JIT cache is filled"

#: Seconds allowed for the import and for each first call (issue 2).
LIMIT_S = 0.5


def run(config: Config) -> list[Case]:
    """Fill the JIT cache in one child, then time the import and first calls in fresh children."""
    filling = run_probe("_probe_startup", "first_calls")
    imports = [run_probe("_probe_startup", "import") for _ in range(config.repeat)]
    warm = run_probe("_probe_startup", "first_calls")
    return [_import_case(imports), _first_call_case(filling, warm)]


def _import_case(answers: list[dict]) -> Case:
    case = Case(NAME, "import vqcore (fresh interpreter)", {"processes": len(answers)})
    row = Row("import vqcore")
    good = [answer for answer in answers if answer.get("status") == "ok"]
    if good:
        row.runs = [answer["import_s"] for answer in good]
        row.seconds = min(row.runs)
        row.extra["torch_imported"] = any(answer["torch_imported"] for answer in good)
    else:
        row.status = MISSING if answers and answers[0].get("status") == "not available" else ERROR
        row.note = answers[0].get("reason", "") if answers else "no process ran"
    case.rows.append(row)
    case.targets.append(evaluate(Target("import vqcore", None, LIMIT_S, unit=" s"), case.rows))
    return case


def _first_call_case(filling: dict, warm: dict) -> Case:
    case = Case(NAME, "first call of each kernel, JIT cache warm", {"inputs": "200 x 16 float32, 8 codes"})
    if warm.get("status") != "ok":
        case.rows.append(Row("first calls", MISSING if warm.get("status") == "not available" else ERROR,
                             note=warm.get("reason", "")))
        return case
    fill_total = sum(c.get("seconds", 0.0) for c in filling.get("calls", {}).values())
    case.notes.append(f"cache-filling run before this one: {fill_total:.2f} s for all first calls")
    case.notes.append("calls run in the order listed, in one process: the first also pays numba's "
                      "one-time start-up (loading its typing and lowering registries)")
    case.notes.append(f"numba cache directory: {warm.get('numba_cache_dir') or 'next to the sources (__pycache__)'}")
    for name, answer in warm["calls"].items():
        label = f"first call: {name}"
        if answer["status"] == OK:
            case.rows.append(Row(label, seconds=answer["seconds"], runs=[answer["seconds"]]))
            case.targets.append(Target(label, None, LIMIT_S, unit=" s"))
        else:
            status = MISSING if answer["status"] == "not available" else ERROR
            case.rows.append(Row(label, status, note=answer.get("reason", "")))
    case.targets = [evaluate(target, case.rows) for target in case.targets]
    return case
