"""Catch config mistakes before any work is spent: unknown ``--cfg-options`` keys, hook arguments.

mmengine merges ``--cfg-options`` blindly: a mistyped key (``train_dataloder.batch_size=4``) or a
variable of the config file (``max_epochs=2``, read only while the file is evaluated) is added and
then ignored, and a ``CheckpointHook`` forwards unknown arguments to ``Runner.save_checkpoint``,
which rejects them at the first save, hours later. These checks run before the Runner is built.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from mmengine import registry
from mmengine.config import Config
from mmengine.hooks import CheckpointHook, Hook
from mmengine.optim import OptimWrapper
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from mtlora_vision.errors import InputError

# Top-level entries something reads after the file is evaluated: the Runner's arguments, what
# mmengine's Runner looks up in its cfg, and this project's own entries.
_RUNNER_READS = {"model_wrapper_cfg", "compile", "activation_checkpointing", "sync_bn"}
_RUNNER_READS |= {"efficient_conv_bn_eval", "find_unused_parameters", "runner_type"}
_PROJECT_READS = {"cpu_threads", "method_name", "data_root"}  # data_root: engine/data_root.py
TOP_LEVEL_KEYS = (set(inspect.signature(Runner.__init__).parameters) - {"self", "cfg"}) | (
    _RUNNER_READS | _PROJECT_READS
)
_LOADER_KEYS = set(inspect.signature(DataLoader.__init__).parameters) - {"self"}
_LOADER_KEYS |= {"worker_init_fn"}
# Entries without a ``type`` whose keys mmengine knows (Runner.__init__ / setup_env / build_*).
_UNTYPED_SCHEMAS: dict[str, set[str]] = {
    "train_dataloader": _LOADER_KEYS,
    "val_dataloader": _LOADER_KEYS,
    "test_dataloader": _LOADER_KEYS,
    "randomness": set(inspect.signature(Runner.set_randomness).parameters) - {"self"},
    "env_cfg": {"cudnn_benchmark", "mp_cfg", "dist_cfg", "resource_limit"},
    "env_cfg.mp_cfg": {"mp_start_method", "opencv_num_threads"},
    "auto_scale_lr": {"enable", "base_batch_size"},
    "default_hooks": {"runtime_info", "timer", "sampler_seed", "logger"}
    | {"param_scheduler", "checkpoint"},
}
# Keys mmengine's builders take out of a typed entry before calling the class.
_BUILDER_KEYS: tuple[tuple[type, set[str]], ...] = (
    (Hook, {"priority"}),
    (OptimWrapper, {"constructor", "paramwise_cfg"}),
    (_ParamScheduler, {"convert_to_iter_based"}),
)
_REGISTRIES = [getattr(registry, name) for name in dir(registry) if name.isupper()]


def _resolve_type(value: Any) -> Any:
    """The class or function a config ``type`` names, or None when it cannot be found."""
    if not isinstance(value, str):
        return value
    for reg in _REGISTRIES:
        found = reg.get(value)
        if found is not None:
            return found
    return None


def accepted_keys(target: Any) -> set[str] | None:
    """Keyword arguments a config entry built as ``target(**cfg)`` may hold; None if any.

    A class whose ``__init__`` takes ``**kwargs`` is followed up its bases; ``CheckpointHook``
    forwards ``**kwargs`` to ``Runner.save_checkpoint``, which accepts none of them.
    """
    if target is None:
        return None
    if not inspect.isclass(target):
        params = inspect.signature(target).parameters.values()
        return None if _takes_any(params) else {"type"} | _names(params)
    keys, forwards = {"type"}, False
    for cls in target.__mro__:
        if cls is object:  # **kwargs all the way up: anything may be meant
            if forwards:
                return None
            break
        if "__init__" not in vars(cls):
            continue
        params = inspect.signature(cls.__init__).parameters.values()
        keys |= _names(params) - {"self"}
        forwards = _takes_any(params)
        if cls is CheckpointHook or not forwards:
            break
    for base, extra in _BUILDER_KEYS:
        if issubclass(target, base):
            keys |= extra
    return keys


def _names(params: Iterable[inspect.Parameter]) -> set[str]:
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _takes_any(params: Iterable[inspect.Parameter]) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in params)


def _dotted_paths(node: Any, prefix: str = "") -> Iterator[str]:
    """Every entry of a config as a dotted path (list items by index)."""
    items: Iterator[tuple[Any, Any]]
    if isinstance(node, Mapping):
        items = iter(node.items())
    elif isinstance(node, (list, tuple)):
        items = iter(enumerate(node))
    else:
        return
    for key, value in items:
        path = f"{prefix}{key}"
        yield path
        yield from _dotted_paths(value, path + ".")


class UnknownConfigKeyError(InputError, KeyError):
    """A config key that nothing would read; the message names the closest existing keys."""

    def __str__(self) -> str:
        return str(self.args[0])


def closest_keys(key: str, cfg: Mapping[str, Any], candidates: Sequence[str] = ()) -> list[str]:
    """Keys most like ``key`` (difflib), best first.

    Among ``candidates`` if given, else among every dotted key of ``cfg`` that something reads
    (plus those ending in the same name).
    """
    if candidates:
        return difflib.get_close_matches(key, candidates, n=3, cutoff=0.6)
    paths = [p for p in _dotted_paths(cfg) if p.split(".", 1)[0] in TOP_LEVEL_KEYS]
    last = key.rsplit(".", 1)[-1]
    same_leaf = [p for p in paths if p.rsplit(".", 1)[-1] == last and p != key]
    close = difflib.get_close_matches(key, paths, n=3, cutoff=0.6)
    return list(dict.fromkeys(close + same_leaf))[:5]


def _unknown(
    key: str, cfg: Mapping[str, Any], why: str, candidates: Sequence[str] = ()
) -> UnknownConfigKeyError:
    near = closest_keys(key, cfg, candidates)
    hint = f" Closest existing keys: {', '.join(near)}." if near else " No similar key exists."
    return UnknownConfigKeyError(f"--cfg-options {key!r}: {why}.{hint}")


def check_cfg_options(cfg: Config, options: Mapping[str, Any]) -> None:
    """Refuse ``--cfg-options`` keys that nothing would read, naming the closest existing keys.

    Each key is walked through ``cfg`` (before the merge). A missing entry is accepted only where
    the enclosing entry can take it: a keyword of the class its ``type`` names (or of the
    DataLoader, ``randomness``, ``env_cfg``... for entries without a type); under an entry whose
    accepted keys cannot be known, only a key that is not a near-miss of an existing one.

    Raises:
        UnknownConfigKeyError: For the first key that would be ignored or is misspelt.
    """
    root = cfg._cfg_dict if isinstance(cfg, Config) else cfg
    for key in options:
        _check_key(root, key)


def _check_key(root: Mapping[str, Any], key: str) -> None:
    parts = key.split(".")
    if parts[0] not in TOP_LEVEL_KEYS:
        why = (
            f"{parts[0]!r} is a variable of the config file, read only while the file is "
            "evaluated, so setting it here would change nothing"
            if parts[0] in root
            else f"no top-level entry {parts[0]!r}"
        )
        raise _unknown(key, root, why)
    node: Any = root
    for depth, part in enumerate(parts):
        parent = ".".join(parts[:depth])
        if isinstance(node, (list, tuple)):
            if not (part.isdigit() and int(part) < len(node)):
                why = f"{parent} is a list of {len(node)} entries (indices 0..{len(node) - 1})"
                raise _unknown(key, root, why)
            node = node[int(part)]
        elif not isinstance(node, Mapping):
            raise _unknown(key, root, f"{parent} is a value ({node!r}), not a dict")
        elif part in node:
            node = node[part]
        else:
            _check_new_entry(root, key, parent, node, part)
            return  # a new entry: nothing below it to check


def _check_new_entry(
    root: Mapping[str, Any], key: str, parent: str, node: Mapping[str, Any], part: str
) -> None:
    """Accept a key missing from ``node`` only where the entry can take it."""
    schema = _UNTYPED_SCHEMAS.get(parent) if parent else TOP_LEVEL_KEYS
    if schema is None and "type" in node:
        schema = accepted_keys(_resolve_type(node["type"]))
    if schema is not None:
        if part not in schema:
            known = {*schema, *map(str, node)} - {"type"}
            near = [f"{parent}.{k}" for k in sorted(known)] if parent else sorted(known)
            raise _unknown(key, root, f"{parent or 'the config'} takes no {part!r}", near)
    elif difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.8):
        raise _unknown(key, root, f"{parent}.{part} does not exist")


def _hook_configs(cfg: Config) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name, hook in (cfg.get("default_hooks") or {}).items():
        if isinstance(hook, Mapping):
            yield f"default_hooks.{name}", hook
    for index, hook in enumerate(cfg.get("custom_hooks") or []):
        if isinstance(hook, Mapping):
            yield f"custom_hooks.{index}", hook


def check_hook_args(cfg: Config) -> None:
    """Check every hook's arguments against its class's signature before the Runner is built.

    Raises:
        UnknownConfigKeyError: Naming the hook entry, the unknown argument and the closest
            accepted ones.
    """
    for where, hook in _hook_configs(cfg):
        cls = _resolve_type(hook.get("type"))
        accepted = accepted_keys(cls)
        if accepted is None:
            continue
        for arg in hook:
            if arg not in accepted:
                near = difflib.get_close_matches(arg, sorted(accepted), n=3, cutoff=0.5)
                name = getattr(cls, "__name__", cls)
                raise UnknownConfigKeyError(
                    f"{where}.{arg}: {name} takes no argument {arg!r}"
                    + (f"; closest: {', '.join(near)}." if near else ".")
                    + f" Accepted: {', '.join(sorted(accepted - {'type'}))}."
                )
