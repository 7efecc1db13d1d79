"""Config mistakes are errors before any work: --cfg-options keys, hook arguments, split size."""

from __future__ import annotations

import pytest
from engine_utils import DEMO, tiny_options
from mmengine.config import Config
from tool_loader import load_tool

from mtlora_vision.engine.config_check import (
    UnknownConfigKeyError,
    accepted_keys,
    check_cfg_options,
    check_hook_args,
)
from mtlora_vision.engine.runtime import load_config, resolve_randomness

train_tool = load_tool("train")


@pytest.fixture(scope="module")
def demo() -> Config:
    return Config.fromfile(DEMO)


def options(*pairs: str) -> dict:
    """Parse ``key=value`` strings as ``--cfg-options`` does."""
    return train_tool.parse_args([DEMO, "--cfg-options", *pairs]).cfg_options


@pytest.mark.parametrize(
    ("option", "message"),
    [
        # A variable of the config file: read while the file is evaluated, never afterwards.
        ("max_epochs=2", "'max_epochs' is a variable of the config file.*train_cfg.max_epochs"),
        (
            "train_dataloder.batch_size=4",
            "no top-level entry 'train_dataloder'. Closest existing keys: "
            "train_dataloader.batch_size",
        ),
        (
            "default_hooks.checkpoint.intervall=1",
            "default_hooks.checkpoint takes no 'intervall'. Closest existing keys: "
            "default_hooks.checkpoint.interval",
        ),
        ("train_dataloader.batch_sizee=4", "Closest existing keys: train_dataloader.batch_size"),
        ("optim_wrapper.optimizer.lrr=1", "Closest existing keys: optim_wrapper.optimizer.lr"),
        ("model.fusion.chanels=(4,4,8,8)", "Closest existing keys: model.fusion.channels"),
        ("param_scheduler.2.T_max=1", "param_scheduler is a list of 2 entries"),
        ("model.tasks.x=1", "model.tasks is a list"),
    ],
)
def test_unknown_cfg_options_name_the_closest_keys(demo, option, message):
    with pytest.raises(UnknownConfigKeyError, match=message):
        check_cfg_options(demo, options(option))


def test_options_that_something_reads_are_accepted(demo, tmp_path):
    good = [
        *tiny_options(tmp_path / "data", pretrained=tmp_path / "w.pth"),
        "randomness.deterministic=True",  # a Runner.set_randomness argument not in the file
        "model.heads.semseg.type=HRNetHead",  # a new entry of a dict without a fixed schema
        "train_dataloader.prefetch_factor=4",  # a DataLoader argument
        "train_dataloader.dataset.keep_original_size=False",  # a dataset argument
        "default_hooks.checkpoint.save_best=semseg/mIoU",
        "model_wrapper_cfg.find_unused_parameters=True",
        "env_cfg.dist_cfg.timeout=60",
    ]
    check_cfg_options(demo, options(*good))


def test_hook_arguments_are_checked_against_the_hook_signature(demo):
    cfg = Config.fromfile(DEMO)
    check_hook_args(cfg)  # the shipped hooks are fine
    # CheckpointHook takes **kwargs and hands them to Runner.save_checkpoint, which refuses them
    # at the first save; the check follows that and knows the accepted names up front.
    assert "interval" in accepted_keys(cfg.default_hooks.checkpoint.type)
    cfg.merge_from_dict({"default_hooks.checkpoint.intervall": 1})
    with pytest.raises(UnknownConfigKeyError, match=r"checkpoint\.intervall.*closest: interval"):
        check_hook_args(cfg)
    cfg = Config.fromfile(DEMO)
    cfg.custom_hooks[0]["full_weight"] = True  # TrainableCheckpointHook(full_weights=...)
    with pytest.raises(UnknownConfigKeyError, match=r"custom_hooks\.0\.full_weight.*full_weights"):
        check_hook_args(cfg)


def test_tool_refuses_a_bad_option_before_any_work(tmp_path):
    work_dir = tmp_path / "work"
    with pytest.raises(UnknownConfigKeyError, match="intervall"):
        train_tool.main(
            [DEMO, "--work-dir", str(work_dir), "--cfg-options",
             *tiny_options(tmp_path / "data"), "default_hooks.checkpoint.intervall=1"]
        )  # fmt: skip
    assert not work_dir.exists()
    assert not (tmp_path / "data").exists()


def test_a_split_smaller_than_one_batch_is_an_error_naming_split_size_and_batch(tmp_path):
    args = [DEMO, "--work-dir", str(tmp_path / "work"), "--cfg-options"]
    args += [*tiny_options(tmp_path / "data"), "train_dataloader.batch_size=10"]
    with pytest.raises(ValueError, match=r"split 'train' of PascalContextMT has 4 samples.* 10"):
        train_tool.main(args)
    assert not list((tmp_path / "work").rglob("*.pth"))


def test_seed_and_deterministic_flags_set_randomness():
    args = train_tool.parse_args([DEMO, "--seed", "5", "--deterministic"])
    assert (args.seed, args.deterministic) == (5, True)
    cfg = load_config(DEMO)
    resolve_randomness(cfg, args.seed, args.deterministic)
    assert cfg.randomness == dict(seed=5, diff_rank_seed=True, deterministic=True)
    cfg = load_config(DEMO)
    resolve_randomness(cfg, None, False)
    assert cfg.randomness == dict(seed=0, diff_rank_seed=True)  # the config's own
    with pytest.raises(ValueError, match="--seed must be in"):
        resolve_randomness(cfg, -1, False)
