"""Time training steps and inference, and measure peak memory, against adapter-free references.

    python tools/benchmark.py configs/paper/mtlora_r64_swin-t_pascal.py \
        --img-size 448 --batch-size 2 --iters 5 --merged
    python tools/benchmark.py configs/mtlora_swin_pascal.py --merged \
        --methods configs/methods/*_swin-t_pascal.py      # every method, side by side
    python tools/benchmark.py configs/mtlora_swin_pascal.py --precision fp32 bf16 \
        --variants model frozen checkpointed               # precisions and checkpointing

Prints a table (``--json``: one JSON object instead); progress goes to stderr. What is measured
and how: :mod:`mtlora_vision.benchmarking` (one module per part). Each ``--methods`` config adds
one more variant, named by its file stem, built as that config is. Merged inference (``--merged``)
times every as-is variant after :func:`~mtlora_vision.adapters.merge.merge_for_inference`
against the frozen reference. ``--precision`` takes several values: every variant is then timed in
each, keyed ``variant@mode``, in the same interleaved rounds. The CPU allocator is chosen as in the
train and test tools (mimalloc where installed; ``MTLORA_ALLOCATOR=tuned`` or ``glibc`` times
glibc's malloc, tuned or at its defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mtlora_vision.cli import (
    DefaultsHelpFormatter,
    add_cfg_options,
    add_step_options,
    parse_cfg_options,
    run_tool,
)
from mtlora_vision.engine.precision import add_precision_argument, default_precision

#: Built-in variants (mtlora_vision.benchmarking.VARIANTS), listed in --help without importing it.
VARIANT_HELP = {
    "model": "the config as is",
    "frozen": "adapters removed, whole Swin frozen (the reference of every ratio)",
    "no_adapter": "adapters removed, other backbone parts trainable as in the config",
    "checkpointed": "the config with activation checkpointing in every stage (not by default; "
    "with recompute_elementwise=True, the default, the heads' BatchNorm + ReLU are recomputed "
    "too); checkpointed:STAGE+STAGE checkpoints only those stages, e.g. checkpointed:0+1",
    "lean": "the config with element-wise recomputation (recompute_elementwise=True, the default); "
    "lean:PART+PART recomputes only those parts, e.g. lean:gelu+dropout (parts: norm, gelu, "
    "dropout, heads, all)",
    "stored": "the config without element-wise recomputation (recompute_elementwise=False)",
}
DEFAULT_VARIANTS = ["model", "frozen", "no_adapter"]

PHASE_NAMES = {"train": "training step", "infer": "inference", "infer_merged": "merged inference"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        description="Benchmark a model against adapter-free variants of itself.",
        epilog="variants: " + "; ".join(f"{k}: {v}" for k, v in VARIANT_HELP.items()),
    )
    parser.add_argument("config", help="config file")
    add_step_options(parser, batch_size=2, iters=5, measured="timed")
    parser.add_argument("--merged", action="store_true", help="also time merged inference")
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=list(PHASE_NAMES),
        help="time only these phases (default: train, infer and, with --merged, infer_merged)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_VARIANTS,
        metavar="NAME",
        help=f"variants of CONFIG to time (default: {', '.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--methods", nargs="+", metavar="CONFIG", help="more configs, timed side by side as is"
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the peak-memory measurement (one forked child per variant and phase, each "
        "building the model and running 2 steps)",
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 is steadier on shared CPUs"
    )
    add_precision_argument(parser, several=True)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time a torch.compile twin of every variant (NAME+compiled): its first call "
        "(compilation), time against the eager variant and, for inference, its largest "
        "relative output difference; compilation takes minutes per variant on a small CPU",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object, no table")
    add_cfg_options(parser, help="config overrides, applied to CONFIG and every --methods config")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.cfg_options = parse_cfg_options(args.cfg_options)
    args.precision = args.precision or [default_precision()]
    return args


def format_report(report: dict[str, Any]) -> str:
    """The report as one table per phase: time, ratios against frozen and the FLOP floor, memory."""
    lines = [
        f"{report['config']}: {report['img_size']}x{report['img_size']}, batch "
        f"{report['batch_size']}, {report['iters']} timed steps, {report['threads']} thread(s)",
        *(f"  {mode}: {text}" for mode, text in report["precisions"].items()),
        f"  CPU allocator: {report['cpu_allocator']}",
    ]
    width = max([14, *(len(n) for phase in PHASE_NAMES for n in report.get(phase, {}))])
    header = (
        f"{'variant':<{width}} {'trainable':>10} {'median s':>9} {'x frozen':>8} {'round x':>8} "
        f"{'cpu s':>7} {'GFLOPs':>8} {'FLOP x':>7} {'x floor':>8} {'+MB':>7}"
    )
    for phase, title in PHASE_NAMES.items():
        if phase not in report:
            continue
        lines += ["", title, header, "-" * len(header)]
        for name, entry in report[phase].items():
            memory = entry.get("memory", {}).get("peak_minus_before_mb")
            lines.append(
                f"{name:<{width}} {entry['trainable_params'] / 1e6:>9.2f}M "
                f"{entry['median_s']:>9.3f} {_ratio(entry.get('ratio_vs_frozen'))} "
                f"{_ratio(entry.get('round_ratio_vs_frozen'))} {entry['cpu_median_s']:>7.3f} "
                f"{entry['gflops']:>8.1f} {_ratio(entry.get('flop_ratio_vs_frozen'), 7)} "
                f"{_ratio(entry.get('over_floor'))} "
                f"{'-' if memory is None else f'{memory:.0f}':>7}"
            )
        speedups = [
            f"{name}: {entry['ratio_vs_fp32']:.2f}x (round {entry['round_ratio_vs_fp32']:.2f}x)"
            for name, entry in report[phase].items()
            if "ratio_vs_fp32" in entry
        ]
        if speedups:
            lines.append("time against the same variant in fp32: " + "; ".join(speedups))
        for name, entry in report[phase].items():
            if "compile_s" in entry:
                diff = entry.get("max_rel_diff")
                lines.append(
                    f"{name}: first call {entry['compile_s']:.0f} s, "
                    f"{entry['ratio_vs_eager']:.2f}x the eager time (round "
                    f"{entry['round_ratio_vs_eager']:.2f}x)"
                    + ("" if diff is None else f", outputs within {diff:.1e} (relative)")
                )
    lines += [
        "",
        "x frozen: ratio of medians; round x: median of per-round ratios (steadier under load);",
        "FLOP x: the FLOP ratio against frozen, the floor of x frozen; x floor: x frozen / FLOP x;",
        "+MB: peak RSS of two steps above the RSS before them, in a forked child (--json: both).",
    ]
    return "\n".join(lines)


def _ratio(value: float | None, width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width - 1}.2f}x"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)  # before the heavy imports: --help and typos answer at once
    from mtlora_vision.benchmarking import run
    from mtlora_vision.benchmarking.process import setup_process

    # the allocator is chosen as in the train and test tools
    allocator, stamp = setup_process(args.img_size, args.threads)

    def progress(message: str) -> None:
        print(stamp(message), file=sys.stderr, flush=True)

    report = run(args, progress)
    report["cpu_allocator"] = allocator
    print(json.dumps(report) if args.json else format_report(report))
    return report


if __name__ == "__main__":
    run_tool(main, preload_allocator=True)
