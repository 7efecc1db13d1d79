"""Method configs (configs/methods): trainable sets, the biases switch, 2-iteration runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import MODELS
from tool_loader import load_tool

from mtlora_vision.comparison.runs import load_run
from mtlora_vision.models.backbones.swin_trainable import (
    ParameterGroup,
    TrainablePolicy,
    is_bitfit_trainable,
    parameter_group,
)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "configs" / "methods"
TASKS = ("semseg", "human_parts", "sal", "normals", "edge")
MULTI = ("lora", "bitfit", "full-ft", "decoder-only")
# The baselines' configs (configs/methods also holds MTL-LoRA/TA-LoRA, tested by their owners).
ALL_CONFIGS = sorted(
    [f"{m}_swin-t_pascal.py" for m in MULTI]
    + [f"demo/{m}_demo.py" for m in MULTI]
    + [f"single-task/{t}_swin-t_pascal.py" for t in TASKS]
    + [f"demo/single-task_{t}_demo.py" for t in TASKS]
)
TINY_ARCH = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2))


def build_tiny(rel: str):
    cfg = Config.fromfile(str(METHODS / rel))
    cfg.model.backbone.update(arch=TINY_ARCH, img_size=64, window_size=4, pretrained=None)
    cfg.model.fusion.channels = (4, 4, 8, 8)
    return cfg, MODELS.build(cfg.model)


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def task_of(rel: str) -> str:
    """Task of a single-task config from its path (independent of the config's contents)."""
    stem = Path(rel).stem.removesuffix("_swin-t_pascal").removesuffix("_demo")
    return stem.removeprefix("single-task_")


def method_of(rel: str) -> str:
    stem = Path(rel).stem.removesuffix("_swin-t_pascal").removesuffix("_demo")
    return "single-task" if "single-task" in rel else stem


def test_every_issue_config_exists() -> None:
    # The names issue 5 fixes (users and scripts call them).
    for method in ("mtl-lora", "ta-lora", "lora", "bitfit", "full-ft", "decoder-only"):
        assert (METHODS / f"{method}_swin-t_pascal.py").is_file()
        assert (METHODS / "demo" / f"{method}_demo.py").is_file()
    for task in TASKS:
        assert (METHODS / "single-task" / f"{task}_swin-t_pascal.py").is_file()
        assert (METHODS / "demo" / f"single-task_{task}_demo.py").is_file()


@pytest.mark.parametrize("rel", ALL_CONFIGS)
def test_trainable_set_is_the_method(rel: str) -> None:
    cfg, model = build_tiny(rel)
    names = {n for n, _ in model.named_parameters()}
    train = trainable_names(model)
    backbone = {n for n in names if n.startswith("backbone.")}
    decoder = names - backbone
    assert decoder <= train, "fusion and heads always train"
    method = method_of(rel)
    if method == "lora":
        assert {n for n in train if ".lora_" in n}, "shared LoRA trains"
        assert not any("lora_tasks" in n or "lora_task" in n for n in names), "no task adapters"
        assert "backbone.layers.0.blocks.0.attn.qkv.base_layer.weight" not in train
        assert "backbone.layers.0.blocks.0.attn.qkv.base_layer.bias" not in train
        assert "backbone.patch_embed.proj.weight" in train
    elif method == "bitfit":
        assert train & backbone == {n for n in backbone if is_bitfit_trainable(n)}
        assert "backbone.layers.0.blocks.0.attn.qkv.bias" in train
        assert "backbone.layers.0.blocks.0.norm1.bias" in train
        assert "backbone.layers.0.blocks.0.norm1.weight" not in train
        assert not any("relative_position_bias_table" in n for n in train)
    elif method == "decoder-only":
        assert not train & backbone
    else:  # full-ft and single-task
        assert train == names
    if method != "lora":
        assert cfg.model.adapter is None
        assert not any(".lora_" in n for n in names)
    expected_tasks = (task_of(rel),) if method == "single-task" else TASKS
    assert tuple(model.tasks) == expected_tasks
    assert tuple(cfg.val_dataloader.dataset.tasks) == expected_tasks
    assert tuple(cfg.test_dataloader.dataset.tasks) == expected_tasks
    assert tuple(cfg.train_dataloader.dataset.tasks) == expected_tasks


def test_demo_twins_differ_from_the_demo_only_in_the_method() -> None:
    demo = Config.fromfile(str(ROOT / "configs" / "mtlora_swin_demo.py"))
    for method in MULTI:
        twin = Config.fromfile(str(METHODS / "demo" / f"{method}_demo.py"))
        full = Config.fromfile(str(METHODS / f"{method}_swin-t_pascal.py"))
        assert twin.model.trainable == full.model.trainable == twin.method_trainable
        assert twin.model.backbone == demo.model.backbone
        assert twin.train_dataloader == demo.train_dataloader
        assert twin.optim_wrapper == demo.optim_wrapper


def test_swin_t_trainable_counts_match_the_spec() -> None:
    analyze = load_tool("analyze_model")
    # docs/model.md#parameter-counts: MTL full FT of Swin-T, 4 tasks, = 29,464,442 trainable; the
    # fifth (edge)
    # decoder adds the same fusion + HRNet head as sal (1 output channel).
    full = analyze.count_parameters(analyze.build_model(str(METHODS / "full-ft_swin-t_pascal.py")))
    sal = analyze.count_parameters(
        analyze.build_model(str(METHODS / "single-task" / "sal_swin-t_pascal.py"))
    )
    edge_decoder = sal["breakdown"]["decoder"]
    assert full["trainable"] == full["total"] == 29_464_442 + edge_decoder
    # Decoder-only: 4 downsamplers + 4 heads = 1,946,624 (docs/model.md#parameter-counts), plus the
    # edge decoder.
    dec = analyze.count_parameters(
        analyze.build_model(str(METHODS / "decoder-only_swin-t_pascal.py"))
    )
    assert dec["trainable"] == 1_946_624 + edge_decoder


def test_swin_t_lora_and_bitfit_counts_match_the_formulas() -> None:
    analyze = load_tool("analyze_model")
    # Swin-T: sum over blocks of the width C = 2*96 + 2*192 + 6*384 + 2*768.
    widths = 2 * 96 + 2 * 192 + 6 * 384 + 2 * 768
    lora = analyze.count_parameters(analyze.build_model(str(METHODS / "lora_swin-t_pascal.py")))
    # rank 64 on qkv (C -> 3C), proj (C -> C), fc1 (C -> 4C), fc2 (4C -> C): r * (in + out) = 16 C.
    assert lora["breakdown"]["shared_adapters"] == 64 * 16 * widths
    assert lora["breakdown"]["task_adapters"] == 0
    bitfit = analyze.count_parameters(analyze.build_model(str(METHODS / "bitfit_swin-t_pascal.py")))
    # Per block: qkv 3C + proj C + fc1 4C + fc2 C + norm1 C + norm2 C = 11 C; patch embedding conv
    # and norm 2 * 96; patch-merging norms over 4C for stages 2-4: 4 * (96 + 192 + 384).
    biases = 11 * widths + 2 * 96 + 4 * (96 + 192 + 384)
    assert bitfit["breakdown"]["other_backbone"] == biases
    assert bitfit["trainable"] == biases + bitfit["breakdown"]["decoder"]


@pytest.mark.parametrize("rel", ["demo/bitfit_demo.py", "demo/decoder-only_demo.py"])
def test_gradients_reach_only_the_trainable_set(rel: str) -> None:
    _, model = build_tiny(rel)
    model.train()
    images = torch.randn(1, 3, 64, 64)
    outputs = model(images, mode="tensor")
    sum(o.float().square().mean() for o in outputs.values()).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable_names(model)
    backbone = {n for n in with_grad if n.startswith("backbone.")}
    if "bitfit" in rel:
        assert backbone
        assert all(n.endswith(".bias") for n in backbone)
    else:
        assert not backbone


def test_ta_lora_fast_weights_get_ten_times_the_learning_rate() -> None:
    for rel in ("ta-lora_swin-t_pascal.py", "demo/ta-lora_demo.py"):
        cfg, model = build_tiny(rel)
        cfg.optim_wrapper.type = OptimWrapper  # the recipe's fp16 AMP wrapper needs a GPU
        cfg.optim_wrapper.pop("dtype", None)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        base_lr = cfg.optim_wrapper.optimizer.lr
        lr_of = {id(p): g["lr"] for g in wrapper.optimizer.param_groups for p in g["params"]}
        prompts = {n: p for n, p in model.named_parameters() if ".attn.prompt." in n}
        assert prompts, rel
        for name, param in prompts.items():
            expected = 10 * base_lr if ".prompt_fast_" in name else base_lr
            assert lr_of[id(param)] == pytest.approx(expected), (rel, name)
        assert lr_of[id(model.get_parameter("backbone.patch_embed.proj.weight"))] == base_lr


def test_biases_switch_of_the_trainable_policy() -> None:
    patterns = (("norms", "norm"),)
    group = parameter_group("layers.0.blocks.0.norm1.bias", patterns, set(), set())
    assert group == "norms"
    assert isinstance(group, ParameterGroup)
    assert group.is_bias
    weight = parameter_group("layers.0.blocks.0.norm1.weight", patterns, set(), set())
    qkv_bias = parameter_group("layers.0.blocks.0.attn.qkv.bias", patterns, set(), set())
    table = parameter_group("layers.0.attn.relative_position_bias_table", patterns, set(), set())
    adapter = parameter_group("x.lora_bias", patterns, {"x.lora_bias"}, set())
    bitfit = TrainablePolicy(norms=False, biases=True)
    assert bitfit.is_trainable(group)
    assert bitfit.is_trainable(qkv_bias)
    assert not bitfit.is_trainable(weight)
    assert not bitfit.is_trainable(table)
    assert adapter == "adapters"
    assert not adapter.is_bias
    default = TrainablePolicy(norms=False)
    assert not default.is_trainable(group)
    assert not default.is_trainable(qkv_bias)
    assert not default.is_trainable("norms")  # plain strings still work
    with pytest.raises(KeyError, match="biases"):
        default.is_trainable("biases")
    assert TrainablePolicy.from_mapping({"biases": True}).biases


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """Two training iterations per demo method config on a tiny synthetic PASCAL-Context."""
    train = load_tool("train")
    tmp = tmp_path_factory.mktemp("methods")
    options = [
        "train_cfg.max_epochs=1",
        "train_cfg.val_begin=2",  # validate once, before training (ValidateBeforeTrainHook)
        "model.backbone.img_size=64",
        "default_hooks.checkpoint.save_last=False",
        "custom_hooks.2.num_images=0",  # no drawing of predictions
        "model.fusion.channels=(4,4,8,8)",
    ]
    for loader in ("train_dataloader", "val_dataloader"):
        options += [
            f"{loader}.batch_size=2",
            f"{loader}.num_workers=0",
            f"{loader}.persistent_workers=False",
            f"{loader}.dataset.img_size=(64,64)",
            f"{loader}.dataset.data_root={tmp / 'data'}",
            f"{loader}.dataset.cache_dir={tmp / 'cache'}",
            f"{loader}.dataset.synthesize_if_missing.root={tmp / 'data'}",
            f"{loader}.dataset.synthesize_if_missing.num_train=4",
            f"{loader}.dataset.synthesize_if_missing.num_val=2",
            f"{loader}.dataset.synthesize_if_missing.size=(64,64)",
        ]
    runs = {}
    for config in sorted(METHODS / rel for rel in ALL_CONFIGS if rel.startswith("demo/")):
        work_dir = tmp / config.stem
        train.main([str(config), "--work-dir", str(work_dir), "--cfg-options", *options])
        runs[config.stem] = work_dir
    return runs


def test_every_method_trains_two_iterations(trained_runs: dict[str, Path]) -> None:
    assert len(trained_runs) == len(MULTI) + len(TASKS)
    for name, work_dir in trained_runs.items():
        (scalars,) = work_dir.glob("*/vis_data/scalars.json")
        records = [json.loads(line) for line in scalars.read_text().splitlines()]
        train_steps = [r for r in records if "loss" in r]
        assert train_steps, name
        # 4 synthetic images at batch 2: 2 iterations (1 when a task, e.g. human_parts, has
        # labels on fewer images and the last batch is dropped)
        assert train_steps[-1]["step"] == (2 if name != "single-task_human_parts_demo" else 1), name
        tasks = (task_of(name),) if "single" in name else TASKS
        for task in tasks:
            assert f"loss_{task}" in train_steps[-1], name
        assert any(f"{tasks[0]}/" in key for r in records for key in r), name


def test_compare_on_trained_runs(trained_runs: dict[str, Path], tmp_path: Path) -> None:
    compare = load_tool("compare")
    rows = compare.main([*map(str, trained_runs.values()), "--out", str(tmp_path)])
    by_name = {r.name: r for r in rows}
    assert set(by_name) == {*MULTI, "single-task"}
    analyze = load_tool("analyze_model")
    bitfit = Config.fromfile(str(METHODS / "demo" / "bitfit_demo.py"))
    bitfit.model.backbone.img_size = 64
    bitfit.model.fusion.channels = (4, 4, 8, 8)
    expected = analyze.count_parameters(MODELS.build(bitfit.model))["trainable"]
    assert by_name["bitfit"].trainable == expected
    assert by_name["single-task"].trainable == sum(
        load_run(trained_runs[f"single-task_{t}_demo"]).trainable for t in TASKS
    )
    assert (tmp_path / "pareto.png").stat().st_size > 0
