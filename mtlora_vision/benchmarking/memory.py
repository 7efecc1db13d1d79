"""Peak memory of one variant and phase, in a child process forked for it.

Peak memory is the peak RSS (``VmHWM``, reset at the child's start) of a child process forked per
variant and phase before any model is built in the parent (tracemalloc does not see torch's
allocations), with the RSS before the first step. Each measurement costs one model build and two
steps in the child; forking saves the interpreter start and the imports (torch, mmengine, timm)
that a fresh subprocess paid per measurement. Compare variants by ``peak_minus_before_mb``: a
forked child's RSS leaves out the shared-library pages it has not touched, so its absolute peak is
lower than a fresh process's by a constant (about 270 MB for the demo config; the increments
agreed within 6 MB, measured side by side).
"""

from __future__ import annotations

import multiprocessing

import torch
from mmengine.config import Config

from mtlora_vision.benchmarking.steps import in_precision, prepare
from mtlora_vision.benchmarking.variants import VariantSpec, build_variant
from mtlora_vision.engine.precision import Precision

FP32 = Precision("fp32", "cpu", "asked")


def rss_mb(field: str = "VmRSS") -> float:
    """Resident set size now (``VmRSS``) or its peak since exec (``VmHWM``), in MiB (Linux).

    ``ru_maxrss`` is not used: after fork + exec it keeps the parent's peak.
    """
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}; memory is measured on Linux only.")


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its RSS now (Linux ``clear_refs``); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _memory_child(
    connection, cfg: Config, spec: VariantSpec, phase: str, size: tuple, precision: Precision
) -> None:
    """Body of a forked child: build one variant, run two steps, send the RSS figures."""
    try:
        img_size, batch_size = size
        reset = reset_peak_rss()  # a fork starts with the parent's peak
        model = build_variant(cfg, spec.transform, img_size)
        images = torch.randn(batch_size, 3, img_size, img_size)
        step = in_precision(prepare(model, phase), precision)
        before = rss_mb()
        for _ in range(2):
            step(images)
        peak = rss_mb("VmHWM")
        connection.send(
            {
                "rss_before_mb": before,
                "peak_rss_mb": peak,
                "peak_minus_before_mb": peak - before,
                "peak_reset": reset,
            }
        )
    except BaseException as err:  # the parent raises it with the variant's name
        connection.send({"error": f"{type(err).__name__}: {err}"})
    finally:
        connection.close()


def measure_memory(
    cfg: Config,
    spec: VariantSpec,
    phase: str,
    img_size: int,
    batch_size: int,
    precision: Precision = FP32,
) -> dict[str, float]:
    """Peak RSS of one variant and phase in ``precision``, in a child forked from this process.

    Call it before this process has built models or run parallel torch operations (a forked
    child inherits the parent's memory and OpenMP state).

    Raises:
        RuntimeError: If the child fails, naming the variant and phase.
    """
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_memory_child,
        args=(send, cfg, spec, phase, (img_size, batch_size), precision),
    )
    child.start()
    send.close()
    try:
        report = receive.recv()
    except EOFError:
        child.join()
        report = {"error": f"the child process ended with code {child.exitcode}"}
    child.join()
    if "error" in report:
        raise RuntimeError(f"Memory of {spec.name!r} ({phase}) failed: {report['error']}")
    return report
