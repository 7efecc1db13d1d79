"""The benchmark's run: every variant and phase in every precision, side by side.

How each piece is measured: :mod:`.variants` (what is timed), :mod:`.steps` (the steps and their
FLOPs), :mod:`.timing` (interleaved rounds, medians, ratios and the FLOP floor) and
:mod:`.memory` (peak RSS in forked children).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch

from mtlora_vision.benchmarking.memory import measure_memory
from mtlora_vision.benchmarking.steps import compiled_step, count_flops, in_precision, prepare
from mtlora_vision.benchmarking.timing import (
    COMPILED,
    resolve_precisions,
    summarize_precision,
    time_interleaved,
    timed_name,
)
from mtlora_vision.benchmarking.variants import (
    build_variant,
    count_trainable,
    load_cfg,
    phase_specs,
    variant_specs,
)


def phases(merged: bool, chosen: list[str] | None = None) -> list[str]:
    """Phases to measure: ``chosen`` if given, else train, infer and (``merged``) infer_merged."""
    if chosen:
        return list(dict.fromkeys(chosen))
    return ["train", "infer"] + (["infer_merged"] if merged else [])


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
            for phase in phases(args.merged, getattr(args, "phases", None))
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
    for phase in phases(args.merged, getattr(args, "phases", None)):
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
