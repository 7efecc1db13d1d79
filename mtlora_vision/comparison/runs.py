"""What a finished run left in its work dir: config, seed, parameter counts and final metrics.

Per work dir (what mmengine 0.10 writes there): the newest ``<timestamp>/vis_data/scalars.json``
that holds a validation gives the final metrics (its last validation), and that run's
``vis_data/config.py`` the config; a ``metrics.json`` in the work dir (``tools/test.py CONFIG CKPT
--out WORK_DIR/metrics.json``) takes precedence over the logged validation. Trainable parameters
are counted on the model built from the config (backbone ``pretrained=None``). A work dir without
metrics, or whose last validation comes before the end of its schedule (a failed or killed run),
raises :class:`NoResultError`; :func:`load_runs` skips it with a warning unless ``strict``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mtlora_vision.engine.log_dirs import log_dir_order

if TYPE_CHECKING:  # mmengine and torch are imported where used: tools' --help answers without them
    from mmengine.config import Config

logger = logging.getLogger(__name__)

#: Keys of a training record in scalars.json; a validation record has none of them.
TRAIN_KEYS = frozenset({"lr", "base_lr", "loss"})


#: Bookkeeping keys of a validation record, not metrics.
NON_METRIC_KEYS = frozenset({"step", "data_time", "time", "epoch", "iter"})


#: Top-level config keys that differ between runs of one experiment (besides randomness.seed).
RUN_ONLY_KEYS = frozenset({"work_dir", "launcher", "resume"})


METRICS_FILE = "metrics.json"


class NoResultError(FileNotFoundError):
    """A work dir holds no final metrics (a failed or unfinished run)."""


@dataclass
class RunResult:
    """One work dir: its config, seed, parameter counts and final metrics."""

    name: str
    work_dir: str
    config: str
    tasks: tuple[str, ...]
    trainable: int
    total: int
    metrics: dict[str, float]
    metrics_source: str
    seed: int | None = None
    group_key: str = ""
    delta_m: float = math.nan


def is_validation_record(record: Mapping[str, Any]) -> bool:
    """Whether a scalars.json record is a validation (metric keys ``task/name``, no loss/lr)."""
    return not (TRAIN_KEYS & set(record)) and any("/" in key for key in record)


def last_validation(scalars_file: Path) -> dict[str, float] | None:
    """Metrics (and ``step``) of the last validation record of an mmengine scalars.json, or None."""
    found = None
    for line in scalars_file.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if is_validation_record(record):
            found = record
    if found is None:
        return None
    kept = {k: float(v) for k, v in found.items() if k not in NON_METRIC_KEYS}
    if "step" in found:
        kept["step"] = float(found["step"])
    return kept


def _run_order(path: Path) -> tuple[str, int]:
    """Sort key of a ``<log folder>/vis_data/<file>`` path: its run's start (``log_dir_order``)."""
    return log_dir_order(path.parent.parent.name)


def find_run(work_dir: Path) -> tuple[Path, dict[str, float], str]:
    """Return the config file, final metrics and their source of one work dir.

    The metrics of a logged validation carry its ``step`` (epoch or iteration) under ``"step"``.

    Raises:
        FileNotFoundError: If the directory does not exist, or holds no dumped config.
        NoResultError: If it holds neither a validation in a ``<timestamp>/vis_data/scalars.json``
            nor a ``metrics.json``.
    """
    if not work_dir.is_dir():
        raise FileNotFoundError(f"Work dir {str(work_dir)!r} does not exist.")
    metrics, source, config = None, "", None
    for scalars in sorted(work_dir.glob("*/vis_data/scalars.json"), key=_run_order, reverse=True):
        metrics = last_validation(scalars)
        if metrics is not None:
            source, config = str(scalars), scalars.parent / "config.py"
            break
    test_out = work_dir / METRICS_FILE
    if test_out.is_file():
        metrics = {k: float(v) for k, v in json.loads(test_out.read_text()).items()}
        source = str(test_out)
    if metrics is None:
        raise NoResultError(
            f"No metrics in work dir {str(work_dir)!r}: no validation in any "
            f"<timestamp>/vis_data/scalars.json and no {METRICS_FILE}. Train with validation "
            f"(tools/train.py) or run tools/test.py CONFIG CKPT --out {work_dir / METRICS_FILE}."
        )
    if config is None or not config.is_file():
        dumped = sorted(work_dir.glob("*.py"), key=lambda p: p.stat().st_mtime)
        dumped += sorted(work_dir.glob("*/vis_data/config.py"), key=_run_order)
        if not dumped:
            raise FileNotFoundError(
                f"No config in work dir {str(work_dir)!r} (looked for <work_dir>/*.py and "
                "<timestamp>/vis_data/config.py, which tools/train.py writes)."
            )
        config = dumped[-1]
    return config, metrics, source


def count_trainable(cfg: Config) -> tuple[int, int]:
    """Trainable and total parameter counts of the config's model (no pretrained weights)."""
    from mmengine.registry import MODELS

    # Dumped configs name types by dotted path; mmengine's registry and our builders import them.
    model_cfg = cfg.model.to_dict()
    if "pretrained" in model_cfg.get("backbone", {}):
        model_cfg["backbone"]["pretrained"] = None
    model = MODELS.build(model_cfg)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def final_step(cfg: Config) -> int | None:
    """The step of a finished run's last validation: ``max_epochs`` (or ``max_iters``).

    mmengine's train loops validate at the end of training unless ``val_begin`` comes after it;
    then (or without a schedule in the config) there is no final validation to expect: None.
    """
    train_cfg = cfg.get("train_cfg") or {}
    value = train_cfg.get("max_epochs", train_cfg.get("max_iters"))
    if value is None or train_cfg.get("val_begin", 1) > value:
        return None
    return int(value)


def group_key(cfg: Config) -> str:
    """The config as canonical JSON without what differs between seeds of one experiment."""
    data = {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY_KEYS}
    randomness = dict(data.get("randomness") or {})
    randomness.pop("seed", None)
    data["randomness"] = randomness
    return json.dumps(data, sort_keys=True, default=repr)


def load_run(work_dir: str | Path) -> RunResult:
    """Collect one work dir: method name, tasks, seed, parameter counts and final metrics.

    Raises:
        NoResultError: If the work dir has no metrics, or its last logged validation comes before
            the end of the schedule (the run stopped early).
    """
    work_dir = Path(work_dir)
    config_file, metrics, source = find_run(work_dir)
    from mmengine.config import Config

    cfg = Config.fromfile(str(config_file))
    step, final = metrics.pop("step", None), final_step(cfg)
    if step is not None and final is not None and step < final:
        raise NoResultError(
            f"Run in {str(work_dir)!r} stopped early: its last validation is at step {step:g} of "
            f"{final} ({source}). Resume it (tools/train.py CONFIG --resume) or leave it out."
        )
    top_level = sorted(work_dir.glob("*.py"))
    name = cfg.get("method_name") or (top_level[0].stem if top_level else work_dir.name)
    trainable, total = count_trainable(cfg)
    seed = (cfg.get("randomness") or {}).get("seed")
    return RunResult(
        name=str(name),
        work_dir=str(work_dir),
        config=str(top_level[0] if top_level else config_file),
        tasks=tuple(cfg.model.tasks),
        trainable=trainable,
        total=total,
        metrics=metrics,
        metrics_source=source,
        seed=None if seed is None else int(seed),
        group_key=group_key(cfg),
    )


def load_runs(work_dirs: Sequence[str | Path], strict: bool = False) -> list[RunResult]:
    """Load every work dir; one without a final result is skipped with a warning unless ``strict``.

    Raises:
        NoResultError: With ``strict``, for the first work dir without a final result; without,
            if no work dir has one.
    """
    runs, skipped = [], []
    for work_dir in work_dirs:
        try:
            runs.append(load_run(work_dir))
        except NoResultError as err:
            if strict:
                raise
            logger.warning("Skipped: %s (--strict makes this an error)", err)
            skipped.append(str(work_dir))
    if not runs:
        raise NoResultError(f"None of the {len(skipped)} work dir(s) holds a finished run.")
    return runs
