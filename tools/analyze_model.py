"""Count the trainable and total parameters of a config's model, with a breakdown.

    python tools/analyze_model.py configs/paper/mtlora_r64_swin-t_pascal.py
    python tools/analyze_model.py CONFIG --json     # one JSON object (integers)

Groups: shared (task-agnostic) adapters, task adapters, other trainable backbone parameters
(patch embedding, norms, relative-position tables, patch-merging reductions), and the decoder
(fusion and heads). The MTLoRA paper counts exactly these trainable parameters
(docs/model.md#parameter-counts).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

from mtlora_vision.cli import DefaultsHelpFormatter, add_cfg_options, parse_cfg_options, run_tool

if TYPE_CHECKING:
    from torch import nn


BREAKDOWN = ("shared_adapters", "task_adapters", "other_backbone", "decoder")
#: Name parts of per-task adapter parameters: MTLoRA task branches, MTL-LoRA task transforms and
#: mixing weights, the prompt adapter's fast (per-task) factors. Other adapter parameters are
#: shared by all tasks (MTL-LoRA's A and up-projections, prompts' slow weights and gates).
TASK_ADAPTER_MARKERS = (".lora_tasks_", ".lora_lambdas", ".lora_mix_logits", ".prompt_fast_")


def breakdown_group(name: str, group: str) -> str:
    """Breakdown bucket of a parameter from its name and trainable-policy group (pure)."""
    if group == "adapters":
        task = any(marker in name for marker in TASK_ADAPTER_MARKERS)
        return "task_adapters" if task else "shared_adapters"
    if group == "decoder":
        return "decoder"
    return "other_backbone"


def count_parameters(model: nn.Module) -> dict:
    """Trainable/total counts, trainable counts per breakdown bucket and per policy group.

    Args:
        model: A model; ``parameter_groups()`` is used when it has one (``MultiTaskModel``),
            otherwise every parameter counts as ``other_backbone``.

    Returns:
        ``{"trainable", "total", "frozen", "breakdown": {...}, "policy_groups": {...}}``.
    """
    groups: Mapping[str, str] = (
        model.parameter_groups() if hasattr(model, "parameter_groups") else {}
    )
    breakdown = dict.fromkeys(BREAKDOWN, 0)
    policy: dict[str, int] = {}
    total = trainable = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if not param.requires_grad:
            continue
        trainable += param.numel()
        group = groups.get(name, "backbone")
        breakdown[breakdown_group(name, group)] += param.numel()
        policy[group] = policy.get(group, 0) + param.numel()
    return {
        "trainable": trainable,
        "total": total,
        "frozen": total - trainable,
        "breakdown": breakdown,
        "policy_groups": dict(sorted(policy.items())),
    }


def build_model(config: str, cfg_options: Mapping | None = None) -> nn.Module:
    """Build the config's model without loading pretrained weights."""
    from mmengine.registry import MODELS

    from mtlora_vision.engine.runtime import load_config

    cfg = load_config(config, cfg_options)
    if "backbone" in cfg.model and "pretrained" in cfg.model.backbone:
        cfg.model.backbone.pretrained = None
    return MODELS.build(cfg.model)


def format_report(config: str, counts: Mapping) -> str:
    """Human-readable table of :func:`count_parameters`."""
    lines = [config, f"{'trainable':<22}{counts['trainable']:>14,}"]
    lines += [f"  {k:<20}{v:>14,}" for k, v in counts["breakdown"].items()]
    lines += [f"{'frozen':<22}{counts['frozen']:>14,}", f"{'total':<22}{counts['total']:>14,}"]
    lines += ["trainable by policy group:"]
    lines += [f"  {k:<20}{v:>14,}" for k, v in counts["policy_groups"].items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsHelpFormatter, description="Count a model's parameters."
    )
    parser.add_argument("config", help="config file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_cfg_options(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.cfg_options = parse_cfg_options(args.cfg_options)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    counts = count_parameters(build_model(args.config, args.cfg_options))
    if args.json:
        print(json.dumps({"config": args.config, **counts}))
    else:
        print(format_report(args.config, counts))
    return counts


if __name__ == "__main__":
    run_tool(main)
