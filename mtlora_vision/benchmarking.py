"""Timing, FLOPs and peak memory of model variants, side by side (``tools/benchmark.py``).

Variants of a config (:data:`VARIANTS`; add more with :func:`register_variant`):

* ``model``: the config as is (its trainable policy).
* ``frozen``: adapters removed (``adapter=None``) and the whole Swin frozen, same fusion and heads:
  the backward pass never enters the backbone.
* ``no_adapter``: adapters removed, the other backbone groups trainable as in the config's policy,
  so the backward pass runs through the backbone as it does for the model.

Timing runs all variants in one process, interleaved step by step (A, B, C, A, B, C, ...), so load
from other processes hits every variant alike; medians and the median of per-round ratios are
reported, of wall-clock seconds and (``cpu_*``) of the process's CPU seconds. A training step is
``zero_grad`` + forward + backward of a surrogate loss (the mean square of every output).

Peak memory is the peak RSS (``VmHWM``, reset at the child's start) of a child process forked per
variant and phase before any model is built in the parent (tracemalloc does not see torch's
allocations), with the RSS before the first step. Each measurement costs one model build and two
steps in the child; forking saves the interpreter start and the imports (torch, mmengine, timm)
that a fresh subprocess paid per measurement. Compare variants by ``peak_minus_before_mb``: a
forked child's RSS leaves out the shared-library pages it has not touched, so its absolute peak is
lower than a fresh process's by a constant (about 270 MB for the demo config; the increments
agreed within 6 MB, measured side by side).
FLOPs (matmuls and convolutions, via ``torch.utils.flop_counter``; window attention on the CPU
flash kernel is not counted, and it is identical across variants) give the floor of each ratio.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import MODELS
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mtlora_vision.adapters.merge import merge_for_inference
from mtlora_vision.engine.fast_slow import set_fast_slow_driver
from mtlora_vision.engine.precision import Precision, autocast, detect_precision
from mtlora_vision.engine.runtime import load_config

#: Variant name -> function turning the config's model dict into the variant's.
VARIANTS: dict[str, Callable[[ConfigDict], ConfigDict]] = {}

BACKBONE_GROUPS = ("adapters", "patch_embed", "norms", "rel_pos", "downsample", "backbone")

FP32 = Precision("fp32", "cpu", "asked")
#: Suffix of the ``torch.compile`` twin of a variant (``--compile``).
COMPILED = "+compiled"


def register_variant(name: str) -> Callable:
    """Decorator adding a model-dict transform to :data:`VARIANTS`."""

    def wrap(fn: Callable[[ConfigDict], ConfigDict]) -> Callable[[ConfigDict], ConfigDict]:
        VARIANTS[name] = fn
        return fn

    return wrap


@register_variant("model")
def _as_is(model: ConfigDict) -> ConfigDict:
    return model


@register_variant("frozen")
def _frozen(model: ConfigDict) -> ConfigDict:
    model.adapter = None
    trainable = dict(model.get("trainable") or {})
    trainable.update(dict.fromkeys(BACKBONE_GROUPS, False))
    model.trainable = trainable
    return model


@register_variant("no_adapter")
def _no_adapter(model: ConfigDict) -> ConfigDict:
    model.adapter = None
    return model


@register_variant("checkpointed")
def _checkpointed(model: ConfigDict) -> ConfigDict:
    model.backbone.grad_checkpointing = True  # every stage's blocks recomputed in the backward
    model.backbone.recompute_elementwise = True  # and stored lean when recomputed
    return model


@register_variant("lean")
def _lean(model: ConfigDict) -> ConfigDict:
    model.backbone.recompute_elementwise = True  # element-wise outputs recomputed in backward
    return model


@dataclass(frozen=True)
class VariantSpec:
    """One timed model: ``transform`` (a :data:`VARIANTS` key) applied to ``config``'s model."""

    name: str
    config: str
    transform: str


def variant_specs(args: argparse.Namespace) -> list[VariantSpec]:
    """CONFIG's ``--variants`` then one as-is variant per ``--methods`` config.

    Raises:
        KeyError: If a variant name is not registered.
        ValueError: If two variants would get the same name.
    """
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise KeyError(f"Unknown variants {unknown}; registered: {sorted(VARIANTS)}.")
    specs = [VariantSpec(v, args.config, v) for v in dict.fromkeys(args.variants)]
    for path in args.methods or []:
        specs.append(VariantSpec(Path(path).stem, path, "model"))
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Variant names {duplicates} appear twice; give each --methods config its own file "
            "name and do not list CONFIG again."
        )
    return specs


def phase_specs(specs: list[VariantSpec], phase: str) -> list[VariantSpec]:
    """Variants timed in ``phase``: merged inference skips ``no_adapter`` (nothing to merge)."""
    if phase != "infer_merged":
        return specs
    return [s for s in specs if s.transform in ("model", "frozen")]


def count_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_variant(cfg: Config, variant: str, img_size: int) -> nn.Module:
    """Build one variant's model (random weights; nothing is downloaded)."""
    model_cfg = copy.deepcopy(cfg.model)
    if "backbone" in model_cfg:
        model_cfg.backbone.pretrained = None
        model_cfg.backbone.img_size = img_size
    if variant not in VARIANTS:
        raise KeyError(f"Unknown variant {variant!r}; registered: {sorted(VARIANTS)}.")
    model = MODELS.build(VARIANTS[variant](model_cfg))
    set_fast_slow_driver(model, "tools/benchmark.py")  # TA-LoRA lookahead/two_phase: step cost only
    return model


def surrogate_loss(outputs: dict[str, Tensor]) -> Tensor:
    """Mean square of every task output, summed: a loss of realistic cost."""
    return sum(o.float().square().mean() for o in outputs.values())


def train_step(model: nn.Module, images: Tensor) -> None:
    """zero_grad + forward + backward."""
    model.zero_grad(set_to_none=True)
    surrogate_loss(model(images, mode="tensor")).backward()


def infer_step(model: nn.Module, images: Tensor) -> None:
    """Forward without autograd."""
    with torch.inference_mode():
        model(images, mode="tensor")


def prepare(model: nn.Module, phase: str) -> Callable[[Tensor], None]:
    """Put ``model`` in the phase's mode and return the step function."""
    if phase == "train":
        model.train()
        return lambda images: train_step(model, images)
    model.eval()
    if phase == "infer_merged":
        merge_for_inference(model)
    return lambda images: infer_step(model, images)


def compiled_step(
    model: nn.Module, phase: str, precision: Precision, images: Tensor
) -> tuple[Callable[[Tensor], None], dict[str, float]]:
    """The step of ``torch.compile(model)`` (a prepared ``model``), compiled on ``images`` now.

    Returns:
        The step and ``compile_s`` (seconds of the first, compiling call) and, for inference
        phases, ``max_rel_diff``: the largest ``max|compiled - eager| / max|eager|`` over the task
        outputs (training outputs differ by their dropout draws, so they are not compared).
    """
    compiled = torch.compile(model)
    run = train_step if phase == "train" else infer_step
    step = in_precision(lambda x: run(compiled, x), precision)
    start = time.perf_counter()
    step(images)
    report = {"compile_s": time.perf_counter() - start}
    if phase == "train":
        return step, report
    with torch.inference_mode(), autocast(precision):
        eager, fast = model(images, mode="tensor"), compiled(images, mode="tensor")
    diff = max(
        float((fast[k].float() - v.float()).abs().max() / v.float().abs().max().clamp_min(1e-12))
        for k, v in eager.items()
    )
    return step, {**report, "max_rel_diff": diff}


def in_precision(step: Callable[[Tensor], None], precision: Precision) -> Callable[[Tensor], None]:
    """``step`` run under :func:`~mtlora_vision.engine.precision.autocast` of ``precision``."""

    def run(images: Tensor) -> None:
        with autocast(precision):
            step(images)

    return run


def resolve_precisions(requested: list[str]) -> list[Precision]:
    """The distinct precisions ``requested`` gives on this machine (``auto`` and its mode once)."""
    chosen: dict[str, Precision] = {}
    for name in requested:
        precision = detect_precision(name)
        chosen.setdefault(precision.mode, precision)
    return list(chosen.values())


def timed_name(variant: str, precision: Precision, several: bool) -> str:
    """Report key of a variant: its name, with ``@mode`` when several precisions are timed."""
    return f"{variant}@{precision.mode}" if several else variant


def inplace_addmm_flops(
    self_shape: torch.Size, a_shape: torch.Size, b_shape: torch.Size, *args: Any, **kwargs: Any
) -> int:
    """FLOPs of ``addmm_`` (same as ``addmm``: a ``(m, k) @ (k, n)`` product)."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def count_flops(model: nn.Module, images: Tensor, phase: str) -> int:
    """FLOPs of one step (matmuls and convolutions)."""
    step = prepare(model, phase)
    # In-place addmm_ (used by the adapter layers) is not in torch's formula table.
    extra = {torch.ops.aten.addmm_: inplace_addmm_flops}
    with FlopCounterMode(display=False, custom_mapping=extra) as counter:
        step(images)
    return int(counter.get_total_flops())


def time_interleaved(
    steps: dict[str, Callable[[Tensor], None]], images: Tensor, iters: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU seconds per step for every variant, measured round-robin.

    With one thread the CPU time is the steadier figure on a shared machine: time spent waiting
    for a core that another process holds is not counted.
    """
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for it in range(warmup + iters):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step(images)
            if it >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def summarize(
    times: dict[str, list[float]], reference: str, prefix: str = "", label: str | None = None
) -> dict[str, dict[str, Any]]:
    """Medians and ratios against ``reference`` (of medians and median of per-round ratios).

    Keys are ``{prefix}median_s``, ``{prefix}all_s``, ``{prefix}ratio_vs_<label>`` and
    ``{prefix}round_ratio_vs_<label>`` (``label`` defaults to ``reference``).
    """
    out: dict[str, dict[str, Any]] = {}
    ref = times.get(reference)
    label = label or reference
    for name, values in times.items():
        median = statistics.median(values)
        entry = {f"{prefix}median_s": median, f"{prefix}all_s": [round(v, 4) for v in values]}
        if ref is not None and name != reference:
            entry[f"{prefix}ratio_vs_{label}"] = median / statistics.median(ref)
            entry[f"{prefix}round_ratio_vs_{label}"] = statistics.median(
                v / r for v, r in zip(values, ref, strict=True)
            )
        out[name] = entry
    return out


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


def load_cfg(path: str, cfg_options: dict | None = None) -> Config:
    """The config at ``path`` with ``cfg_options`` merged (they apply to every config)."""
    return load_config(path, cfg_options)


def phases(merged: bool) -> list[str]:
    """Phases to measure: train, infer, and infer_merged with ``merged``."""
    return ["train", "infer"] + (["infer_merged"] if merged else [])


def summarize_precision(
    wall: dict[str, list[float]],
    cpu: dict[str, list[float]],
    names: dict[str, str],
    flops: dict[str, int],
    mode: str,
    several: bool,
) -> dict[str, dict[str, Any]]:
    """Summaries of the timed keys ``names`` (key -> variant) of one precision ``mode``.

    Medians and ratios against ``frozen`` of the same precision (:func:`summarize`, wall and CPU
    seconds), GFLOPs, the FLOP ratio against ``frozen`` (the floor of the measured ratio),
    ``over_floor`` (measured ratio / floor), with several precisions ``ratio_vs_fp32`` against
    the same variant in fp32, and for compiled twins ``ratio_vs_eager`` against the eager one.
    """
    ref = next((k for k, v in names.items() if v == "frozen"), "")
    summary = summarize({n: wall[n] for n in names}, ref, label="frozen")
    for name, entry in summarize({n: cpu[n] for n in names}, ref, "cpu_", "frozen").items():
        summary[name].update(entry)
    for name, variant in names.items():
        entry = summary[name]
        entry["precision"] = mode
        entry["gflops"] = flops[variant] / 1e9
        if "frozen" in flops and variant != "frozen":
            floor = entry["flop_ratio_vs_frozen"] = flops[variant] / flops["frozen"]
            if "ratio_vs_frozen" in entry:
                entry["over_floor"] = entry["ratio_vs_frozen"] / floor
                entry["round_over_floor"] = entry["round_ratio_vs_frozen"] / floor
        base, _, _ = name.partition("@")
        others = {"fp32": f"{base}@fp32" if several else "", "eager": name.replace(COMPILED, "")}
        for label, other in others.items():  # the same variant in fp32 / not compiled
            if other != name and other in wall:
                pair = summarize({other: wall[other], name: wall[name]}, other, label=label)
                entry.update({k: v for k, v in pair[name].items() if "_vs_" in k})
    return summary


def run(args: argparse.Namespace, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Benchmark every variant and phase in every precision; return the report.

    With several precisions every (variant, precision) pair is timed in the same interleaved
    rounds, keyed ``variant@mode``; ratios against ``frozen`` and the FLOP floor are taken within
    a precision, and ``ratio_vs_fp32`` compares a variant with itself in fp32.

    Args:
        args: ``config``, ``variants``, ``methods``, ``img_size``, ``batch_size``, ``iters``,
            ``warmup``, ``merged``, ``no_memory``, ``cfg_options``, ``precision`` (a list of
            names, as ``tools/benchmark.py``).
        progress: Called with a short line before each stage (the tool prints it on stderr).
    """
    torch.manual_seed(0)
    specs = variant_specs(args)
    precisions = resolve_precisions(args.precision)
    several = len(precisions) > 1
    configs = {
        path: load_cfg(path, args.cfg_options) for path in dict.fromkeys(s.config for s in specs)
    }
    report: dict[str, Any] = {
        "config": args.config,
        "methods": {s.name: s.config for s in specs if s.config != args.config},
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "iters": args.iters,
        "threads": torch.get_num_threads(),
        "precisions": {p.mode: p.describe() for p in precisions},
    }
    memory: dict[tuple[str, str], dict[str, float]] = {}
    if not args.no_memory:  # first: the children must fork from a parent without models
        jobs = [
            (phase, s, p)
            for phase in phases(args.merged)
            for s in phase_specs(specs, phase)
            for p in precisions
        ]
        for index, (phase, spec, precision) in enumerate(jobs, start=1):
            name = timed_name(spec.name, precision, several)
            progress(f"memory {index}/{len(jobs)}: {name}, {phase}")
            memory[phase, name] = measure_memory(
                configs[spec.config], spec, phase, args.img_size, args.batch_size, precision
            )
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    for phase in phases(args.merged):
        chosen = phase_specs(specs, phase)
        progress(f"{phase}: building {', '.join(s.name for s in chosen)}")
        models = {
            s.name: build_variant(configs[s.config], s.transform, args.img_size) for s in chosen
        }
        trainable = {name: count_trainable(m) for name, m in models.items()}
        progress(f"{phase}: counting FLOPs")
        flops = {name: count_flops(m, images, phase) for name, m in models.items()}
        plain = {name: prepare(m, phase) for name, m in models.items()}
        steps = {
            timed_name(name, p, several): in_precision(step, p)
            for p in precisions
            for name, step in plain.items()
        }
        compile_info: dict[str, dict[str, float]] = {}
        for p in precisions if getattr(args, "compile", False) else ():
            for name, model in models.items():
                key = timed_name(name + COMPILED, p, several)
                progress(f"{phase}: compiling {key}")
                steps[key], compile_info[key] = compiled_step(model, phase, p, images)
        progress(f"{phase}: timing {args.warmup} + {args.iters} rounds of {len(steps)} variants")
        wall, cpu = time_interleaved(steps, images, args.iters, args.warmup)
        summary: dict[str, dict[str, Any]] = {}
        for p in precisions:
            names = {
                timed_name(s.name + twin, p, several): s.name
                for twin in ("", COMPILED)
                for s in chosen
                if timed_name(s.name + twin, p, several) in steps
            }
            summary.update(summarize_precision(wall, cpu, names, flops, p.mode, several))
        for name, entry in summary.items():
            entry["trainable_params"] = trainable[name.partition("@")[0].replace(COMPILED, "")]
            entry.update(compile_info.get(name, {}))
            if (phase, name) in memory:
                entry["memory"] = memory[phase, name]
        report[phase] = summary
        del models, steps, plain
    return report
