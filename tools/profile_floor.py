"""Profile a model against the frozen Swin and say where its time over the FLOP floor goes.

    python tools/profile_floor.py configs/paper/mtlora_r64_swin-t_pascal.py \
        --img-size 448 --batch-size 1 --phases train infer_merged --precision fp32 bf16

For each phase and precision: the profiled step time of the model and of ``frozen`` (the reference
of ``tools/benchmark.py``), their FLOP ratio (the floor) and the time over it, ``model - ratio *
frozen``, split per aten operator and per module (forward and backward) with the largest shares
first. How the split is made: :mod:`mtlora_vision.benchmarking.profiling`. Timings come from the
profiler (a few microseconds per operator on both variants); ``tools/benchmark.py`` gives the
unprofiled medians. ``--by-shape N`` adds the model's N most expensive aten calls per step keyed by
operator, argument shapes and layout (:mod:`mtlora_vision.benchmarking.op_shapes`), where a slow
product on a transposed view or a needless copy shows.
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

PHASES = ("train", "infer", "infer_merged")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter,
        description="Where the time of a model over its FLOP floor against the frozen Swin goes.",
    )
    parser.add_argument("config", help="config file")
    add_step_options(parser, batch_size=1, iters=3, measured="profiled")
    parser.add_argument(
        "--phases",
        nargs="+",
        choices=PHASES,
        default=["train", "infer_merged"],
        help="phases to profile",
    )
    parser.add_argument("--top", type=int, default=12, help="rows per table, largest excess first")
    parser.add_argument(
        "--by-shape",
        type=int,
        default=0,
        metavar="N",
        help="also list the model's N most expensive aten calls per step by operator, argument "
        "shapes and strides (2 more steps per phase and precision)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    add_precision_argument(parser, several=True)
    parser.add_argument("--json", action="store_true", help="print one JSON object, no tables")
    add_cfg_options(parser, help="config overrides")
    return parser


def profile(args: argparse.Namespace, progress) -> dict[str, Any]:
    """Profiles of ``model`` and ``frozen`` per phase and precision, with the floor split."""
    import torch

    from mtlora_vision.benchmarking.op_shapes import time_by_shape, top_rows
    from mtlora_vision.benchmarking.profiling import over_floor, profile_interleaved
    from mtlora_vision.benchmarking.steps import count_flops, in_precision, prepare
    from mtlora_vision.benchmarking.timing import resolve_precisions
    from mtlora_vision.benchmarking.variants import build_variant, load_cfg

    torch.manual_seed(0)
    cfg = load_cfg(args.config, args.cfg_options)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    report: dict[str, Any] = {"config": args.config, "img_size": args.img_size,
                              "batch_size": args.batch_size, "iters": args.iters,
                              "threads": torch.get_num_threads()}  # fmt: skip
    for phase in args.phases:
        models = {v: build_variant(cfg, v, args.img_size) for v in ("model", "frozen")}
        progress(f"{phase}: counting FLOPs")
        flops = {v: count_flops(m, images, phase) for v, m in models.items()}
        plain = {v: prepare(m, phase) for v, m in models.items()}
        ratio = flops["model"] / flops["frozen"]
        for precision in resolve_precisions(args.precision):
            progress(f"{phase}@{precision.mode}: profiling {args.iters} rounds")
            steps = {v: (in_precision(plain[v], precision), models[v]) for v in models}
            prof = profile_interleaved(steps, images, args.iters, args.warmup)
            model_ms = prof["model"]["wall_ms"]["total"]
            frozen_ms = prof["frozen"]["wall_ms"]["total"]
            report[f"{phase}@{precision.mode}"] = {
                "model_ms": model_ms,
                "frozen_ms": frozen_ms,
                "flop_ratio": ratio,
                "floor_ms": ratio * frozen_ms,
                "over_floor_ms": model_ms - ratio * frozen_ms,
                "x_floor": model_ms / (ratio * frozen_ms),
                **{
                    table: over_floor(prof["model"][table], prof["frozen"][table], ratio)
                    for table in ("kinds", "ops", "modules", "module_ops")
                },
            }
            if args.by_shape > 0:
                progress(f"{phase}@{precision.mode}: timing the model's aten calls by shape")
                rows = time_by_shape(steps["model"][0], images, steps=2, warmup=0)
                report[f"{phase}@{precision.mode}"]["by_shape"] = top_rows(rows, args.by_shape)
    return report


def format_report(report: dict[str, Any], top: int) -> str:
    """One block per phase and precision: totals, then the largest shares per op and module."""
    lines = [f"{report['config']}: {report['img_size']}x{report['img_size']}, batch "
             f"{report['batch_size']}, {report['iters']} profiled steps, "
             f"{report['threads']} thread(s)"]  # fmt: skip
    for key, entry in report.items():
        if not isinstance(entry, dict):
            continue
        lines += [
            "",
            f"{key}: model {entry['model_ms']:.0f} ms, frozen {entry['frozen_ms']:.0f} ms, FLOP "
            f"ratio {entry['flop_ratio']:.2f}x, floor {entry['floor_ms']:.0f} ms, over it "
            f"{entry['over_floor_ms']:.0f} ms ({entry['x_floor']:.2f}x floor)",
        ]
        for table in ("kinds", "ops", "modules", "module_ops"):
            width = max(24, *(len(row[0]) for row in entry[table][:top]))
            title = table.rstrip("s")
            lines.append(f"  {title:<{width}} {'model ms':>9} {'frozen ms':>9} {'over ms':>8}")
            for name, model_ms, frozen_ms, excess in entry[table][:top]:
                lines.append(f"  {name:<{width}} {model_ms:>9.1f} {frozen_ms:>9.1f} {excess:>8.1f}")
            rest = entry[table][top:]
            if rest:
                lines.append(f"  {f'{len(rest)} more':<{width}} {'':>9} {'':>9} "
                             f"{sum(r[3] for r in rest):>8.1f}")  # fmt: skip
        if "by_shape" in entry:
            lines.append("  model's aten calls by operator, argument shapes and strides, per step:")
            lines += format_shape_rows(entry["by_shape"])
    lines += ["", "over ms: model - FLOP ratio x frozen; each table's rows sum to the time over "
              "the floor."]  # fmt: skip
    return "\n".join(lines)


def format_shape_rows(rows: list[dict[str, Any]]) -> list[str]:
    """Lines of the ``--by-shape`` table: time and calls per step, operator and arguments."""
    lines = [f"  {'ms':>8} {'calls':>6}  operator: arguments (shape dtype [strides])"]
    for row in rows:
        label = f"{row['op']}: {', '.join(row['args'])}" if row["args"] else row["op"]
        lines.append(f"  {row['ms']:>8.2f} {row['calls']:>6g}  {label}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.by_shape < 0:
        parser.error(f"--by-shape {args.by_shape}: give a number of rows, 0 or more.")
    args.cfg_options = parse_cfg_options(args.cfg_options)
    args.precision = args.precision or [default_precision()]
    from mtlora_vision.benchmarking.process import setup_process

    _, stamp = setup_process(args.img_size, args.threads)

    def progress(message: str) -> None:
        print(stamp(message), file=sys.stderr, flush=True)

    report = profile(args, progress)
    print(json.dumps(report) if args.json else format_report(report, args.top))
    return report


if __name__ == "__main__":
    run_tool(main, preload_allocator=True)
