"""--precision: hardware detection, the choice table, and what it does to a config."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper
from torch.optim import SGD

from mtlora_vision.engine.amp import CPUAutocastOptimWrapper
from mtlora_vision.engine.precision import (
    PRECISION_ENV,
    Precision,
    add_precision_argument,
    apply_precision,
    autocast,
    choose_precision,
    cpu_bf16_flags,
    requested_precision,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
AMX = ("amx_bf16",)


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_bf16_flags(str(info)) == ("amx_bf16", "avx512_bf16")
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_bf16_flags(str(info)) == ()
    assert cpu_bf16_flags(str(tmp_path / "missing")) == ()  # not Linux: nothing detected


@pytest.mark.parametrize(
    ("requested", "cuda", "flags", "mode"),
    [
        ("auto", True, (), "fp16"),  # the official recipe on a GPU
        ("auto", False, AMX, "bf16"),
        ("auto", False, ("avx512_bf16",), "bf16"),
        ("auto", False, (), "fp32"),
        ("amp", True, AMX, "fp16"),
        ("amp", False, (), "bf16"),
        ("fp32", True, AMX, "fp32"),
        ("bf16", True, (), "bf16"),
        ("fp16", True, (), "fp16"),
    ],
)
def test_choice_table(requested, cuda, flags, mode):
    chosen = choose_precision(requested, cuda=cuda, cpu_flags=flags)
    assert (chosen.mode, chosen.device) == (mode, "cuda" if cuda else "cpu")


def test_choice_says_why():
    auto = choose_precision("auto", cuda=False, cpu_flags=("amx_bf16", "avx512_bf16"))
    assert (
        auto.describe()
        == "bf16 autocast on cpu (auto: CPU with native bf16: amx_bf16, avx512_bf16)"
    )
    assert "none of amx_bf16, avx512_bf16" in choose_precision("auto", False, ()).describe()
    assert "loss scaling" in choose_precision("auto", True, ()).describe()
    assert "emulated" in choose_precision("bf16", cuda=False, cpu_flags=()).reason


def test_impossible_choices_are_errors():
    with pytest.raises(ValueError, match=r"fp16 needs CUDA.*use bf16"):
        choose_precision("fp16", cuda=False, cpu_flags=AMX)
    with pytest.raises(ValueError, match="no bf16 support"):
        choose_precision("bf16", cuda=True, cpu_flags=(), cuda_bf16=False)
    with pytest.raises(ValueError, match=rf"'half'.*\${PRECISION_ENV}.*auto, fp32, bf16, fp16"):
        choose_precision("half", cuda=False, cpu_flags=())


def test_flag_alias_and_environment_default(monkeypatch):
    parser = argparse.ArgumentParser()
    add_precision_argument(parser)
    assert requested_precision(parser.parse_args(["--amp"])) == "amp"
    assert requested_precision(parser.parse_args(["--precision", "bf16"])) == "bf16"
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    assert requested_precision(parser.parse_args([])) == "auto"
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert requested_precision(parser.parse_args([])) == "fp32"
    assert requested_precision(parser.parse_args(["--amp"])) == "amp"  # the flag wins
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp8"])


def _cfg(wrapper_type="AmpOptimWrapper"):
    return Config(
        dict(
            optim_wrapper=dict(type=wrapper_type, dtype="float16", optimizer=dict()),
            val_cfg=dict(type="ValLoop"),
            test_cfg=dict(type="mmengine.runner.TestLoop"),
        )
    )


def test_apply_on_the_cpu():
    cfg = _cfg()
    apply_precision(cfg, Precision("fp32", "cpu", "asked"))
    assert cfg.optim_wrapper.type == "mmengine.optim.optimizer.optimizer_wrapper.OptimWrapper"
    assert "dtype" not in cfg.optim_wrapper
    assert cfg.val_cfg.fp16 is False
    assert cfg.test_cfg.fp16 is False
    assert cfg.precision == "fp32 (asked)"  # recorded in the run's config dump
    apply_precision(cfg, Precision("bf16", "cpu", "asked"))
    assert cfg.optim_wrapper.type == "mtlora_vision.engine.amp.CPUAutocastOptimWrapper"
    assert cfg.val_cfg.fp16 is True
    assert cfg.test_cfg.fp16 is True


def test_apply_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_autocast_dtype", lambda *a: calls.append(a))
    cfg = _cfg("OptimWrapper")
    apply_precision(cfg, Precision("fp16", "cuda", "auto"))
    assert cfg.optim_wrapper.type.endswith(".AmpOptimWrapper")
    assert (cfg.optim_wrapper.dtype, cfg.optim_wrapper.loss_scale) == ("float16", "dynamic")
    assert cfg.val_cfg.fp16 is True
    assert calls == []
    apply_precision(cfg, Precision("bf16", "cuda", "asked"))
    assert cfg.optim_wrapper.dtype == "bfloat16"
    assert "loss_scale" not in cfg.optim_wrapper
    assert calls == [("cuda", torch.bfloat16)]  # mmengine's val/test autocast uses the default


def test_custom_types_are_named_not_ignored():
    with pytest.raises(ValueError, match=r"optim_wrapper\.type='MyWrapper'.*--precision fp32"):
        apply_precision(_cfg("MyWrapper"), Precision("bf16", "cpu", "asked"))
    cfg = _cfg("MyWrapper")
    apply_precision(cfg, Precision("fp32", "cpu", "asked"))  # fp32 needs no change: left alone
    assert cfg.optim_wrapper.type == "MyWrapper"
    cfg = _cfg()
    cfg.val_cfg.type = "MyLoop"
    with pytest.raises(ValueError, match=r"val_cfg\.type='MyLoop'"):
        apply_precision(cfg, Precision("bf16", "cpu", "asked"))


@pytest.mark.parametrize(
    ("config", "precision", "wrapper"),
    [
        ("mtlora_swin_pascal.py", Precision("fp32", "cpu", "x"), OptimWrapper),  # fp16 config
        ("mtlora_swin_pascal.py", Precision("bf16", "cpu", "x"), CPUAutocastOptimWrapper),
        ("mtlora_swin_demo.py", Precision("bf16", "cpu", "x"), CPUAutocastOptimWrapper),
        ("mtlora_swin_demo.py", Precision("fp16", "cuda", "x"), None),  # needs a GPU to build
    ],
)
def test_real_configs_still_print_dump_and_build(config, precision, wrapper, tmp_path):
    cfg = Config.fromfile(str(CONFIGS / config))
    apply_precision(cfg, precision)
    assert "optim_wrapper" in cfg.pretty_text  # the Runner logs it; a class object broke it
    cfg.dump(str(tmp_path / "dumped.py"))  # the work-dir copy, re-read by test.py
    dumped = Config.fromfile(str(tmp_path / "dumped.py"))
    apply_precision(dumped, precision)  # idempotent
    assert dumped.optim_wrapper == cfg.optim_wrapper
    if wrapper is not None:
        built = build_optim_wrapper(
            torch.nn.Linear(2, 2), dict(type=cfg.optim_wrapper.type, optimizer=dict(type=SGD, lr=1))
        )
        assert type(built) is wrapper


def test_cpu_autocast_wrapper_runs_in_bf16():
    layer = torch.nn.Linear(4, 4)
    wrapper = CPUAutocastOptimWrapper(optimizer=torch.optim.SGD(layer.parameters(), lr=0.1))
    with wrapper.optim_context(layer):
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16


def test_autocast_context_of_a_precision():
    layer = torch.nn.Linear(4, 4)
    with autocast(Precision("bf16", "cpu", "asked")):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast(Precision("fp32", "cpu", "asked")):
        assert layer(torch.randn(2, 4)).dtype == torch.float32
