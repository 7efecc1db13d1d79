"""Time training steps and inference, and measure peak memory, against adapter-free references.

    python tools/benchmark.py configs/paper/mtlora_r64_swin-t_pascal.py \
        --img-size 448 --batch-size 2 --iters 5 --merged
    python tools/benchmark.py configs/mtlora_swin_pascal.py --merged \
        --methods configs/methods/*_swin-t_pascal.py      # every method, side by side

Prints one JSON object. Variants of CONFIG (``--variants``; add more with
:func:`register_variant`):

* ``model``: the config as is (its trainable policy).
* ``frozen``: adapters removed (``adapter=None``) and the whole Swin frozen, same fusion and heads:
  the backward pass never enters the backbone.
* ``no_adapter``: adapters removed, the other backbone groups trainable as in the config's policy,
  so the backward pass runs through the backbone as it does for the model.

Each ``--methods`` config adds one more variant, named by its file stem, built as that config is.
Merged inference (``--merged``) times every as-is variant after
:func:`~mtlora_vision.adapters.merge.merge_for_inference` (MTLoRA/LoRA shared updates folded in,
MTL-LoRA per-task weights merged on the fly; prompts and BitFit have nothing to merge) against the
frozen reference.

Timing runs all variants in one process, interleaved step by step (A, B, C, A, B, C, ...), so load
from other processes hits every variant alike; medians and the median of per-round ratios are
reported, of wall-clock seconds and (``cpu_*``) of the process's CPU seconds, the steadier figure
with ``--threads 1`` on a shared machine. The CPU allocator is tuned as in the train and test tools
(:mod:`mtlora_vision.allocator`; ``MTLORA_MALLOC_TUNING=0`` times glibc's defaults).
A training step is ``zero_grad`` + forward + backward of a surrogate loss (the mean square of every
output). Peak memory is the peak RSS (``VmHWM``) of a fresh subprocess per variant
and phase (tracemalloc does not see torch's allocations), with the RSS before the first step.
FLOPs (matmuls and convolutions, via ``torch.utils.flop_counter``; window attention on the CPU
flash kernel is not counted, and it is identical across variants) give the floor of each ratio.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.registry import MODELS
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mtlora_vision.adapters.merge import merge_for_inference
from mtlora_vision.allocator import tune_cpu_allocator

#: Variant name -> function turning the config's model dict into the variant's.
VARIANTS: dict[str, Callable[[ConfigDict], ConfigDict]] = {}

BACKBONE_GROUPS = ("adapters", "patch_embed", "norms", "rel_pos", "downsample", "backbone")


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
    return MODELS.build(VARIANTS[variant](model_cfg))


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
    times: dict[str, list[float]], reference: str, prefix: str = ""
) -> dict[str, dict[str, Any]]:
    """Medians and ratios against ``reference`` (of medians and median of per-round ratios).

    Keys are ``{prefix}median_s``, ``{prefix}all_s``, ``{prefix}ratio_vs_<reference>`` and
    ``{prefix}round_ratio_vs_<reference>``.
    """
    out: dict[str, dict[str, Any]] = {}
    ref = times.get(reference)
    for name, values in times.items():
        median = statistics.median(values)
        entry = {f"{prefix}median_s": median, f"{prefix}all_s": [round(v, 4) for v in values]}
        if ref is not None and name != reference:
            entry[f"{prefix}ratio_vs_{reference}"] = median / statistics.median(ref)
            entry[f"{prefix}round_ratio_vs_{reference}"] = statistics.median(
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


def memory_worker(args: argparse.Namespace) -> dict[str, float]:
    """Run one variant/phase in this (fresh) process and report its memory."""
    cfg = load_cfg(args, args.config)
    model = build_variant(cfg, args.worker_variant, args.img_size)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    step = prepare(model, args.worker_phase)
    before = rss_mb()
    for _ in range(2):
        step(images)
    peak = rss_mb("VmHWM")
    return {"rss_before_mb": before, "peak_rss_mb": peak, "peak_minus_before_mb": peak - before}


def measure_memory(args: argparse.Namespace, spec: VariantSpec, phase: str) -> dict[str, float]:
    """Spawn a fresh interpreter for one measurement and return its report."""
    cmd = [
        sys.executable,
        __file__,
        spec.config,
        "--img-size",
        str(args.img_size),
        "--batch-size",
        str(args.batch_size),
        "--worker-variant",
        spec.transform,
        "--worker-phase",
        phase,
    ]
    if args.cfg_options:
        cmd += ["--worker-cfg-json", json.dumps(dict(args.cfg_options))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def load_cfg(args: argparse.Namespace, path: str) -> Config:
    """The config at ``path`` with ``--cfg-options`` merged (they apply to every config)."""
    cfg = Config.fromfile(path)
    options = dict(args.cfg_options or {})
    if args.worker_cfg_json:
        options.update(json.loads(args.worker_cfg_json))
    if options:
        cfg.merge_from_dict(options)
    return cfg


def phases(args: argparse.Namespace) -> list[str]:
    """Phases to measure: train, infer, and infer_merged with ``--merged``."""
    return ["train", "infer"] + (["infer_merged"] if args.merged else [])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Benchmark every variant and phase; return the JSON report."""
    torch.manual_seed(0)
    specs = variant_specs(args)
    configs = {path: load_cfg(args, path) for path in dict.fromkeys(s.config for s in specs)}
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    report: dict[str, Any] = {
        "config": args.config,
        "methods": {s.name: s.config for s in specs if s.config != args.config},
        "img_size": args.img_size,
        "batch_size": args.batch_size,
        "iters": args.iters,
        "threads": torch.get_num_threads(),
        "malloc_tuned": args.malloc_tuned,
    }
    for phase in phases(args):
        chosen = phase_specs(specs, phase)
        models = {
            s.name: build_variant(configs[s.config], s.transform, args.img_size) for s in chosen
        }
        trainable = {name: count_trainable(m) for name, m in models.items()}
        flops = {name: count_flops(m, images, phase) for name, m in models.items()}
        steps = {name: prepare(m, phase) for name, m in models.items()}
        wall, cpu = time_interleaved(steps, images, args.iters, args.warmup)
        summary = summarize(wall, "frozen")
        for name, entry in summarize(cpu, "frozen", prefix="cpu_").items():
            summary[name].update(entry)
        for spec in chosen:
            entry = summary[spec.name]
            entry["trainable_params"] = trainable[spec.name]
            entry["gflops"] = flops[spec.name] / 1e9
            if "frozen" in flops and spec.name != "frozen":
                entry["flop_ratio_vs_frozen"] = flops[spec.name] / flops["frozen"]
            if not args.no_memory:
                entry["memory"] = measure_memory(args, spec, phase)
        report[phase] = summary
        del models, steps
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark a model against adapter-free ones.")
    parser.add_argument("config", help="config file")
    parser.add_argument("--img-size", type=int, default=448)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant")
    parser.add_argument("--merged", action="store_true", help="also time merged inference")
    parser.add_argument("--variants", nargs="+", default=["model", "frozen", "no_adapter"])
    parser.add_argument(
        "--methods", nargs="+", metavar="CONFIG", help="more configs, timed side by side as is"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 is steadier on shared CPUs"
    )
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, help="config overrides")
    parser.add_argument("--worker-variant", help=argparse.SUPPRESS)
    parser.add_argument("--worker-phase", help=argparse.SUPPRESS)
    parser.add_argument("--worker-cfg-json", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # As the train and test tools do; MTLORA_MALLOC_TUNING=0 (inherited by the memory
    # subprocesses) times glibc's defaults instead.
    args.malloc_tuned = tune_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = memory_worker(args) if args.worker_variant else run(args)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
