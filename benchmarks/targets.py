"""The three latency targets, computed from a run's rows (so they can be recomputed from any JSON).

The goals were set on the default family's ``full`` network (``families.DEFAULT_FAMILY``, what
``langcolor colorize`` runs without ``--model``): for it they bind. A run of any other family gets
the same three ratios on its own ``full`` rows with the same goals, marked ``binding: false``: two
of them measure the serving stack (the server's fixed overhead, scaling with callers), which is the
same for any family, so they are worth reading; but they were never set as that family's goals.
"""

from __future__ import annotations

from langcolor.client.families import DEFAULT_FAMILY

TARGET_CONFIG = "full"
TARGET_FAMILY = DEFAULT_FAMILY  # the family the goals bind
# Rows written before a run recorded its family came from the default family, the only one then.
UNRECORDED_FAMILY = DEFAULT_FAMILY


def targets_note(family: str) -> str:
    """One paragraph for the run's JSON and the README: whether the targets bind ``family``."""
    if family == TARGET_FAMILY:
        return f"Latency targets set on the default family's full network ({TARGET_FAMILY}): binding."
    return (
        f"Reference only (binding: false): these goals were set on the default family's full network "
        f"({TARGET_FAMILY}). For {family} the same ratios are computed on its own full network with the "
        "same goals. Triton vs in-process and concurrency 8 vs 1 measure the serving stack, the same for "
        "any family; onnxruntime vs PyTorch measures the runtime on this network's graph. A family other "
        "than the default is judged on how well it colours, not on these latency goals."
    )


def _one(rows: list[dict], **match) -> dict | None:
    found = [r for r in rows if all(r.get(k) == v for k, v in match.items()) and not r.get("variant")]
    return found[0] if found else None


def evaluate_targets(rows: list[dict], config: str = TARGET_CONFIG, family: str = TARGET_FAMILY) -> list[dict]:
    """ORT vs PyTorch at batch 1; Triton gRPC vs ORT at batch 1; Triton throughput c=8 vs c=1.

    Only ``family``'s rows count; they bind only for ``TARGET_FAMILY``."""
    rows = [r for r in rows if r.get("family", UNRECORDED_FAMILY) == family]
    e2e = dict(config=config, stage="e2e", batch=1)
    torch_row = _one(rows, path="pytorch", concurrency=1, **e2e)
    ort_row = _one(rows, path="onnxruntime", concurrency=1, **e2e)
    grpc1 = _one(rows, path="triton-grpc", concurrency=1, **e2e)
    grpc8 = _one(rows, path="triton-grpc", concurrency=8, **e2e)
    out = []

    def add(name, goal, value, met, detail, rows_used):
        out.append({"name": name, "family": family, "config": config, "binding": family == TARGET_FAMILY,
                    "goal": goal, "value": value, "met": met, "detail": detail,
                    "stable": all(r["stable"] for r in rows_used) if rows_used else None})

    if torch_row and ort_row:
        v = torch_row["p50_ms"] / ort_row["p50_ms"]
        add("onnxruntime vs pytorch eager, batch 1", ">= 1.30x faster", round(v, 3), v >= 1.3,
            f"p50 {torch_row['p50_ms']:.1f} ms vs {ort_row['p50_ms']:.1f} ms", [torch_row, ort_row])
    else:
        add("onnxruntime vs pytorch eager, batch 1", ">= 1.30x faster", None, False, "not measured", [])
    if grpc1 and ort_row:
        v = grpc1["p50_ms"] / ort_row["p50_ms"]
        add("triton gRPC vs in-process onnxruntime, batch 1", "<= 1.15x", round(v, 3), v <= 1.15,
            f"p50 {grpc1['p50_ms']:.1f} ms vs {ort_row['p50_ms']:.1f} ms", [grpc1, ort_row])
    else:
        add("triton gRPC vs in-process onnxruntime, batch 1", "<= 1.15x", None, False, "not measured", [])
    if grpc1 and grpc8:
        v = grpc8["throughput"] / grpc1["throughput"]
        add("triton throughput, concurrency 8 vs 1", ">= 1.30x", round(v, 3), v >= 1.3,
            f"{grpc8['throughput']:.2f} vs {grpc1['throughput']:.2f} images/s", [grpc1, grpc8])
    else:
        add("triton throughput, concurrency 8 vs 1", ">= 1.30x", None, False, "not measured", [])
    return out
