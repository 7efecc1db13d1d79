"""What a run says on the console: a short start-up summary and the best / last metrics at the end.

mmengine's full environment, config and hook dump stays in the run's ``.log`` file (see
:class:`~mtlora_vision.engine.runner.MultiTaskRunner`); the console gets :func:`startup_summary`
before the first iteration and :func:`metric_history_table` after the last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from mtlora_vision.engine.run_logging import QuietStart
from mtlora_vision.engine.runtime import _type_name
from mtlora_vision.evaluation.units import metric_unit
from mtlora_vision.tasks import LOWER_IS_BETTER_KEYS


def precision_of(optim_wrapper_cfg: Mapping | None, device: str) -> str:
    """Describe the training precision an ``optim_wrapper`` config gives on ``device``."""
    if not optim_wrapper_cfg:
        return "fp32"
    kind = _type_name(optim_wrapper_cfg.get("type", "OptimWrapper"))
    if kind == "CPUAutocastOptimWrapper":
        return "bf16 autocast (CPU)"
    if kind == "AmpOptimWrapper":
        dtype = optim_wrapper_cfg.get("dtype") or "float16"
        dtype = "fp16" if "16" in str(dtype) and "bf" not in str(dtype) else str(dtype)
        return f"{dtype} autocast (AMP) on {device}"
    return "fp32"


def format_parameters(trainable: int, total: int) -> str:
    """``"0.72 M trainable of 2.58 M (27.9%)"``."""
    share = 100.0 * trainable / total if total else 0.0
    return f"{trainable / 1e6:.2f} M trainable of {total / 1e6:.2f} M ({share:.1f}%)"


def format_block(title: str, rows: Sequence[tuple[str, str]]) -> str:
    """A titled block of ``name: value`` lines with aligned values."""
    width = max(len(name) for name, _ in rows)
    return "\n".join([title, *(f"  {name + ':':<{width + 1}} {value}" for name, value in rows)])


def _dataset_line(loader) -> str | None:
    if loader is None:
        return None
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    root = getattr(dataset, "data_root", None)
    where = f" from {root}" if root is not None else ""
    if getattr(dataset, "is_synthetic", False):
        written = getattr(dataset, "synthetic_written", False)
        where += " (synthetic, written by this run)" if written else " (synthetic)"
    return f"{len(dataset)} images{where}"


def startup_rows(runner, phase: str) -> list[tuple[str, str]]:
    """Facts of a run for the start-up summary (``phase``: ``"train"`` or ``"test"``)."""
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    params = list(model.parameters())
    device = str(params[0].device) if params else "cpu"
    world = runner.world_size
    processes = f"{world} processes ({runner.launcher})" if world > 1 else "1 process"
    threads = f", {torch.get_num_threads()} torch thread(s)" if device == "cpu" else ""
    rows = [
        ("config", runner.cfg.filename or "(built in Python)"),
        ("work dir", runner.work_dir),
        ("log", f"{runner.logger.log_file} (full environment and config)"),
        ("device", f"{device}, {processes}{threads}"),
    ]
    chosen = runner.cfg.get("precision")  # the tools' --precision, with the reason
    if chosen or phase == "train":
        rows.append(("precision", chosen or precision_of(runner.cfg.get("optim_wrapper"), device)))
    if device == "cpu" and runner.cfg.get("cpu_allocator"):  # set by tools/train.py and test.py
        rows.append(("allocator", runner.cfg.cpu_allocator))
    if phase == "train":
        randomness = runner.cfg.get("randomness") or {}
        rows.append(
            (
                "seed",
                f"{randomness.get('seed')} (deterministic: "
                f"{bool(randomness.get('deterministic', False))})",
            )
        )
    trainable = sum(p.numel() for p in params if p.requires_grad)
    tasks = getattr(model, "tasks", None)
    named = f", tasks {', '.join(tasks)}" if tasks else ""
    rows.append(("model", f"{type(model).__name__}{named}"))
    rows.append(("parameters", format_parameters(trainable, sum(p.numel() for p in params))))
    loops = (
        (("train", "train_loop"), ("val", "val_loop"))
        if phase == "train"
        else (("test", "test_loop"),)
    )
    for name, attr in loops:
        loop = getattr(runner, f"_{attr}", None)
        line = _dataset_line(getattr(loop, "dataloader", None)) if loop is not None else None
        if line is not None:
            rows.append((f"{name} data", line))
    rows.append(("weights", weights_source(runner, phase)))
    return rows


def weights_source(runner, phase: str) -> str:
    """Where the run's weights come from: resumed checkpoint, loaded checkpoint or scratch."""
    load_from = runner.cfg.get("load_from")
    if phase == "train" and runner.cfg.get("resume") and load_from:
        return f"resumed from {load_from} (epoch {runner.epoch}, iteration {runner.iter})"
    if load_from:
        return f"loaded from {load_from}"
    pretrained = runner.cfg.get("model", {}).get("backbone", {}).get("pretrained")
    return f"new run; backbone from {pretrained}" if pretrained else "new run, random backbone"


def startup_summary(runner, phase: str) -> str:
    """The console's start-up block for a train or test run."""
    return format_block(f"Start-up ({phase}):", startup_rows(runner, phase))


@dataclass
class MetricHistory:
    """Validation metrics per epoch; best (by direction) and last value of each."""

    rows: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def add(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Record the metrics of one validation."""
        self.rows.append((epoch, {k: float(v) for k, v in metrics.items()}))

    def table(self, lower_is_better: frozenset[str] = LOWER_IS_BETTER_KEYS) -> str:
        """``metric  best (epoch)  last (epoch)`` lines, metrics in first-seen order."""
        keys = list(dict.fromkeys(k for _, m in self.rows for k in m))
        lines = []
        for key in keys:
            seen = [(epoch, m[key]) for epoch, m in self.rows if key in m]
            lower = key in lower_is_better
            best = min(seen, key=lambda s: s[1]) if lower else max(seen, key=lambda s: s[1])
            arrow = "lower is better" if lower else "higher is better"
            lines.append((key, best, seen[-1], arrow))
        width = max([len("metric"), *(len(k) for k, *_ in lines)])
        head = f"{'metric':<{width}}  {'best':>10}  {'epoch':>5}  {'last':>10}  {'epoch':>5}  unit"
        out = [head]
        for key, (b_epoch, b_value), (l_epoch, l_value), arrow in lines:
            out.append(
                f"{key:<{width}}  {b_value:>10.4f}  {b_epoch:>5}  {l_value:>10.4f}  {l_epoch:>5}"
                f"  {metric_unit(key):<4}  ({arrow})"
            )
        return "\n".join(out)


def metric_history_table(history: MetricHistory) -> str:
    """The end-of-training block, or an explanation when no validation ran."""
    if not history.rows:
        return "No validation ran, so there are no metrics to summarise."
    return "Validation metrics, best and last:\n" + history.table()


class RunSummaryHook(Hook):
    """Log the start-up summary before the first iteration and the best / last metrics at the end.

    Registered by :class:`~mtlora_vision.engine.runner.MultiTaskRunner`; messages go through the
    run's logger (console and ``.log`` file, rank 0 only). Until the summary, the console shows
    warnings only (``quiet``): the lines logged while data, optimizer and checkpoint are set up
    are in the ``.log`` file.

    Args:
        quiet: The console filter to lift when the summary is shown.
    """

    priority = "VERY_HIGH"  # the summary comes before ValidateBeforeTrainHook's validation

    def __init__(self, quiet: QuietStart | None = None) -> None:
        self.history = MetricHistory()
        self.quiet = quiet

    def _end_quiet_start(self) -> None:
        if self.quiet is not None:
            self.quiet.active = False

    def before_train(self, runner) -> None:
        """Log the start-up summary of a training run (after resuming, so it names the epoch)."""
        self._end_quiet_start()
        runner.logger.info(startup_summary(runner, "train"))

    def before_test(self, runner) -> None:
        """Log the start-up summary of a test run."""
        self._end_quiet_start()
        runner.logger.info(startup_summary(runner, "test"))

    def before_val(self, runner) -> None:
        """A validation-only run has no summary: show its console from here on."""
        self._end_quiet_start()

    def after_run(self, runner) -> None:
        """Make sure the console is not left quiet."""
        self._end_quiet_start()

    def after_val_epoch(self, runner, metrics: Mapping[str, float] | None = None) -> None:
        """Record this validation's metrics with the number of epochs trained so far."""
        if metrics:
            self.history.add(runner.epoch, metrics)

    def after_train(self, runner) -> None:
        """Log each metric's best and last value with their epoch."""
        runner.logger.info(metric_history_table(self.history))
