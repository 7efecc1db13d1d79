"""Settings changed between a checkpoint and ``--resume``: honoured and logged, or refused.

mmengine's resume loads the optimizer's param groups (learning rate, weight decay...) and the
schedulers' whole state (base values, begin, end, T_max...) from the checkpoint, so a new learning
rate or schedule in the config is silently replaced by the old one. :class:`ResumeSettingsHook`
fixes that on our side: every checkpoint records its settings, and on resume a changed optimizer
or schedule is recomputed from the new config at the resumed iteration (as if the run had used it
from the start) before mmengine applies the checkpoint. Settings that shape the model cannot
change on resume and stop it with an error naming them; so can't the samples per step (batch
size per process, number of processes): the checkpoint's iteration count, the schedule's
position and the order of the samples are counted in steps of the old size.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

from mmengine.hooks import Hook

from mtlora_vision.errors import ConfigError

SETTINGS_KEY = "resume_settings"
# What the record holds: config entries, plain values only (safe to load, easy to compare).
RECORDED = ("model", "optim_wrapper", "param_scheduler", "train_cfg", "auto_scale_lr")
# Entries that change the optimizer's param groups or the schedule: recomputed on resume.
RESCHEDULED = ("optim_wrapper.optimizer", "optim_wrapper.paramwise_cfg", "param_scheduler")
RESCHEDULED += ("auto_scale_lr",)
# Model settings that do not change its parameters: these may change on resume.
MODEL_CHANGEABLE = ("model.adapter.dropout", "model.backbone.drop_path_rate", "model.losses")
MODEL_CHANGEABLE += ("model.backbone.pretrained",)
# Samples per step: recorded beside the config entries, refused when changed on resume.
BATCH = "batch"
_UNSET = "<unset>"


def plain(value: Any) -> Any:
    """A config value as plain data: dicts, lists, str, numbers, bool, None (types by name)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if inspect.isclass(value) or inspect.isfunction(value):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def record_settings(cfg: Mapping[str, Any], processes: int = 1) -> dict[str, Any]:
    """The settings of a run that a checkpoint records: ``RECORDED`` and the samples per step."""
    record = {key: plain(cfg.get(key)) for key in RECORDED}
    loader = cfg.get("train_dataloader") or {}
    batch_size = loader.get("batch_size")
    record[BATCH] = {"train_dataloader.batch_size": batch_size, "processes": processes}
    return record


def diff_settings(old: Any, new: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Yield ``(dotted key, old, new)`` for every leaf that differs (missing leaves as <unset>)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            path = f"{prefix}.{key}" if prefix else key
            yield from diff_settings(old.get(key, _UNSET), new.get(key, _UNSET), path)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from diff_settings(a, b, f"{prefix}.{index}")
    elif old != new:
        yield prefix, old, new


def _under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def split_changes(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """Changes between two records: ``(allowed, refused)``.

    Refused: what shapes the model, and the samples per step (shown without the ``batch.``
    prefix). A record from before the samples per step were recorded is not checked for them.
    """
    allowed, refused = [], []
    old, new = dict(old), dict(new)
    if BATCH not in old:
        new.pop(BATCH, None)
    for key, before, after in diff_settings(old, new):
        if _under(key, (BATCH,)):
            refused.append((key[len(BATCH) + 1 :], before, after))
            continue
        shapes_model = _under(key, ("model",)) and not _under(key, MODEL_CHANGEABLE)
        (refused if shapes_model else allowed).append((key, before, after))
    return allowed, refused


def replay_schedule(runner, iterations: int, epochs: int) -> None:
    """Step the freshly built schedulers as training would have, up to the resumed position.

    The schedulers (and with them the optimizer's param groups) then hold what the *current*
    config gives at that iteration, as ``ParamSchedulerHook`` steps them: iteration-based ones
    after every iteration, epoch-based ones after every epoch.
    """
    schedulers = runner.param_schedulers or []
    groups = schedulers.values() if isinstance(schedulers, dict) else [schedulers]
    flat = [s for group in groups for s in group]
    per_epoch = max(len(runner.train_dataloader), 1)
    with warnings.catch_warnings():  # no optimizer steps here, by design
        warnings.filterwarnings("ignore", message="Detected call of `scheduler.step")
        _step_schedulers(flat, iterations, epochs, per_epoch)


def _step_schedulers(flat: list, iterations: int, epochs: int, per_epoch: int) -> None:
    for it in range(iterations):
        for scheduler in flat:
            if not scheduler.by_epoch:
                scheduler.step()
        if (it + 1) % per_epoch == 0 and (it + 1) // per_epoch <= epochs:
            for scheduler in flat:
                if scheduler.by_epoch:
                    scheduler.step()


def _show(value: Any) -> str:
    return value if value == _UNSET else repr(value)


class ResumeSettingsHook(Hook):
    """Record a run's settings in every checkpoint; on resume honour or refuse what changed.

    Changed optimizer, schedule or schedule-length settings (``optim_wrapper``,
    ``param_scheduler``, ``train_cfg``, ``auto_scale_lr``) and the model's regularisation
    (dropout, DropPath, losses) take effect, with one log line naming each change (old -> new).
    Any other model setting (architecture, ranks, adapter type, tasks...) is an error, and so is
    a changed batch size per process or number of processes.
    """

    priority = "VERY_HIGH"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Store the run's settings as plain data in ``checkpoint["meta"]``."""
        record = record_settings(runner.cfg, runner.world_size)
        checkpoint.setdefault("meta", {})[SETTINGS_KEY] = record

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """On resume: refuse model changes; make new optimizer/schedule settings take effect.

        Raises:
            ValueError: Naming each setting that cannot change on resume.
        """
        if not runner.cfg.get("resume"):
            return  # load_from: weights only, the config's optimizer and schedule apply anyway
        meta = checkpoint.get("meta", {})
        old = meta.get(SETTINGS_KEY)
        if old is None:
            runner.logger.warning(
                "Resume: the checkpoint records no settings (written by an older version); "
                "changed settings are neither checked nor applied to the optimizer and schedule."
            )
            return
        allowed, refused = split_changes(old, record_settings(runner.cfg, runner.world_size))
        if refused:
            shown = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in refused)
            raise ConfigError(
                "Cannot resume: settings that shape the model or the samples per step differ "
                f"from the checkpoint's (checkpoint -> now: {shown}). Set them back to resume, or "
                "start a new run in another --work-dir (load_from=CHECKPOINT starts it from these "
                "weights)."
            )
        if not allowed:
            return
        shown = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in allowed)
        note = ""
        if any(_under(k, RESCHEDULED) for k, _, _ in allowed):
            self._reschedule(runner, checkpoint)
            lrs = sorted({g["lr"] for g in runner.optim_wrapper.optimizer.param_groups})
            note = f" Schedule recomputed for the new settings: lr now {lrs}."
        # WARNING: shown on the console, which is quiet until training starts (engine/runner.py).
        runner.logger.warning(f"Resume with changed settings (checkpoint -> now): {shown}.{note}")

    @staticmethod
    def _reschedule(runner, checkpoint: dict) -> None:
        """Replace the checkpoint's param-group settings and scheduler states by the new ones."""
        meta = checkpoint["meta"]
        replay_schedule(runner, meta["iter"], meta["epoch"])
        saved = checkpoint.get("optimizer", {}).get("param_groups", [])
        live = runner.optim_wrapper.optimizer.param_groups
        if len(saved) != len(live):
            raise ConfigError(
                f"Cannot resume: the optimizer has {len(live)} parameter groups, the checkpoint "
                f"{len(saved)}; the optimizer constructor or paramwise_cfg changed the grouping."
            )
        for saved_group, live_group in zip(saved, live, strict=True):
            saved_group.update({k: v for k, v in live_group.items() if k != "params"})
        base = getattr(runner.optim_wrapper, "base_param_settings", None)
        if base is not None and "base_param_settings" in checkpoint.get("optimizer", {}):
            checkpoint["optimizer"]["base_param_settings"] = base  # the logged base_lr, replayed
        checkpoint.pop("param_schedulers", None)  # keep the replayed schedulers
