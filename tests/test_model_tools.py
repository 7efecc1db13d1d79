"""analyze_model, convert_official_checkpoint, init_model and benchmark (tools/ and apis/)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from tool_loader import load_tool

from mtlora_vision import benchmarking
from mtlora_vision.apis.inference import init_model
from mtlora_vision.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "paper"
OFFICIAL_TSV = Path(__file__).resolve().parent / "fixtures" / "official_state_dict_keys.tsv"

TINY_CONFIG = """
from mtlora_vision.adapters.config import MTLoRAConfig
from mtlora_vision.models.backbones.swin import SwinBackbone
from mtlora_vision.models.heads.hrnet import HRNetHead
from mtlora_vision.models.multitask import MultiTaskModel

model = dict(
    type=MultiTaskModel,
    tasks=("semseg", "human_parts", "sal", "normals"),
    backbone=dict(
        type=SwinBackbone,
        arch=dict(embed_dim=24, depths=(2, 1, 2, 1), num_heads=(1, 2, 2, 4)),
        img_size=64,
        window_size=4,
        drop_path_rate=0.0,
    ),
    adapter=dict(type=MTLoRAConfig, shared_rank={rank}, task_rank=2, dropout=0.0),
    fusion=dict(channels=(4, 4, 8, 8)),
    heads=dict(default=dict(type=HRNetHead)),
)
"""


def tiny_config(tmp_path: Path, rank: int = 4, tasks: str | None = None) -> str:
    text = TINY_CONFIG.format(rank=rank)
    if tasks:
        text = text.replace('("semseg", "human_parts", "sal", "normals")', tasks)
    path = tmp_path / f"tiny_r{rank}_{abs(hash(tasks))}.py"
    path.write_text(text)
    return str(path)


def randomise(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "heads." in name:
                p.normal_(std=0.05)
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)


def paper_formula(r: int, plus: bool) -> dict[str, int]:
    """docs/model.md#parameter-counts for Swin-T, 4 tasks, task rank 4."""
    dims, depths = (96, 192, 384, 768), (2, 2, 6, 2)
    shared = sum(16 * c * r * d for c, d in zip(dims, depths, strict=True))
    shared += sum(6 * c * r for c in dims[:3]) if plus else 0
    return {
        "shared_adapters": shared,
        "task_adapters": 4 * sum(12 * c * 4 for c in dims),
        "other_backbone": 51_258 if plus else 1_599_546,
        "decoder": 1_946_624,
    }


@pytest.mark.parametrize(
    ("name", "trainable"),
    [
        ("mtlora_r16_swin-t_pascal", 4_953_146),
        ("mtlora_r32_swin-t_pascal", 6_083_642),
        ("mtlora_r64_swin-t_pascal", 8_344_634),
        ("mtlora-plus_r16_swin-t_pascal", 3_469_370),
        ("mtlora-plus_r32_swin-t_pascal", 4_664_378),
        ("mtlora-plus_r64_swin-t_pascal", 7_054_394),
    ],
)
def test_analyze_model_paper_counts(name: str, trainable: int, capsys) -> None:
    tool = load_tool("analyze_model")
    counts = tool.main([str(PAPER / f"{name}.py"), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["trainable"] == counts["trainable"] == trainable
    assert isinstance(printed["total"], int)
    plus, r = "plus" in name, int(name.split("_r")[1].split("_")[0])
    assert counts["breakdown"] == paper_formula(r, plus)
    if name == "mtlora_r64_swin-t_pascal":
        assert counts["total"] == 34_262_906
        assert counts["frozen"] == 27_517_818 - 1_599_546  # frozen Swin-T minus its trainable part


def official_from_tsv() -> dict[str, torch.Tensor]:
    state = {}
    for line in OFFICIAL_TSV.read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.split("\t")
        state[key] = torch.randn(ast.literal_eval(shape)) if shape != "()" else torch.tensor(7)
    return state


def test_official_layout_converts_and_loads_strictly(tmp_path, capsys) -> None:
    tool = load_tool("convert_official_checkpoint")
    official = official_from_tsv()
    torch.save({"model": official, "epoch": 299}, tmp_path / "official.pth")
    config = str(PAPER / "mtlora_r64_swin-t_pascal.py")
    tool.main([str(tmp_path / "official.pth"), str(tmp_path / "ours.pth"), "--check", config])
    assert "loads strictly" in capsys.readouterr().out
    converted = torch.load(tmp_path / "ours.pth")["state_dict"]
    # 431 official entries minus 6 attention masks and 12 relative-position indices
    assert len(converted) == 431 - 18
    torch.testing.assert_close(
        converted["backbone.layers.1.downsample.reduction.weight"],
        official["backbone.layers.0.downsample.reduction.weight"],
    )
    torch.testing.assert_close(
        converted["backbone.layers.3.blocks.1.mlp.fc2.lora_tasks_b.sal"],
        official["backbone.layers.3.blocks.1.mlp.fc2.lora_tasks_B.sal"],
    )
    torch.testing.assert_close(
        converted["heads.normals.norm.running_var"],
        official["decoders.decoders.normals.last_layer.1.running_var"],
    )


def test_conversion_round_trip_gives_the_same_outputs(tmp_path) -> None:
    tool = load_tool("convert_official_checkpoint")
    config = tiny_config(tmp_path)
    source = init_model(config)
    randomise(source)
    official = tool.to_official_state_dict(source.state_dict())
    assert "backbone.layers.0.downsample.reduction.weight" in official
    assert "decoders.decoders.sal.last_layer.3.bias" in official
    official["backbone.layers.0.blocks.1.attn_mask"] = torch.zeros(16, 16, 16)
    official["backbone.layers.0.blocks.1.attn.relative_position_index"] = torch.zeros(16, 16)
    torch.save({"model": official}, tmp_path / "official.pth")
    tool.main([str(tmp_path / "official.pth"), str(tmp_path / "ours.pth")])
    loaded = init_model(config, tmp_path / "ours.pth")
    assert not loaded.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = source.eval()(x), loaded(x)
    for task in expected:
        torch.testing.assert_close(actual[task], expected[task], rtol=0, atol=0)
    with pytest.raises(KeyError, match=r"decoders\.extra"):
        tool.convert_state_dict({"decoders.extra.weight": torch.zeros(1)})


def test_init_model_refuses_checkpoints_for_other_models(tmp_path) -> None:
    model = init_model(tiny_config(tmp_path))
    overridden = init_model(tiny_config(tmp_path), cfg_options={"model.backbone.img_size": 96})
    assert overridden.backbone.img_size == 96
    assert all(
        p.requires_grad == ("base_layer" not in n)
        for n, p in model.named_parameters()
        if ".attn." in n
    )
    torch.save({"state_dict": model.state_dict(), "meta": {"epoch": 3}}, tmp_path / "r4.pth")
    other_tasks = tiny_config(tmp_path, tasks='("semseg", "edge")')
    with pytest.raises(KeyError, match=r"lora_tasks_a\.edge") as info:
        init_model(other_tasks, tmp_path / "r4.pth")
    assert "['human_parts', 'normals', 'sal', 'semseg']; the model for ['edge', 'semseg']" in str(
        info.value
    )
    with pytest.raises(ValueError, match=r"lora_shared_a: \(4, 24\) vs \(8, 24\)"):
        init_model(tiny_config(tmp_path, rank=8), tmp_path / "r4.pth")
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        init_model(tiny_config(tmp_path), tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.py"):
        init_model(tmp_path / "nowhere.py")


def test_benchmark_reports_every_variant(tmp_path) -> None:
    tool = load_tool("benchmark")
    config = tiny_config(tmp_path)
    report = tool.main(
        [config, "--img-size", "64", "--iters", "2", "--merged", "--no-memory", "--threads", "1"]
    )
    assert set(report["train"]) == {"model", "frozen", "no_adapter"}
    assert set(report["infer_merged"]) == {"model", "frozen"}
    for phase in ("train", "infer", "infer_merged"):
        model = report[phase]["model"]
        assert len(model["all_s"]) == 2
        assert model["ratio_vs_frozen"] == pytest.approx(
            model["median_s"] / report[phase]["frozen"]["median_s"]
        )
        assert model["cpu_ratio_vs_frozen"] == pytest.approx(
            model["cpu_median_s"] / report[phase]["frozen"]["cpu_median_s"]
        )
        assert len(model["cpu_all_s"]) == 2
        assert min(model["cpu_all_s"]) > 0
        assert model["flop_ratio_vs_frozen"] > 1.0
    assert report["cpu_allocator"].startswith(("mimalloc", "glibc"))
    # A frozen Swin needs no backbone backward: training it costs fewer FLOPs than with adapters.
    assert report["train"]["frozen"]["gflops"] < report["train"]["no_adapter"]["gflops"]
    cfg = benchmarking.load_cfg(config)
    spec = benchmarking.VariantSpec("model", config, "model")
    memory = benchmarking.measure_memory(cfg, spec, "train", img_size=64, batch_size=2)
    assert memory["peak_rss_mb"] >= memory["rss_before_mb"] > 0
    assert memory["peak_reset"]  # the forked child's peak starts at its own RSS


def test_benchmark_prints_a_table_progress_on_stderr_and_json_on_request(tmp_path, capsys):
    tool = load_tool("benchmark")
    config = tiny_config(tmp_path)
    argv = [config, "--img-size", "64", "--iters", "1", "--warmup", "0", "--variants", "model",
            "frozen", "--threads", "1"]  # fmt: skip
    tool.main(argv)
    out, err = capsys.readouterr()
    assert "training step" in out
    assert "inference" in out
    assert out.splitlines()[1] == "  fp32: fp32 (asked)"  # MTLORA_PRECISION=fp32 (conftest.py)
    assert out.splitlines()[2].startswith("  CPU allocator: glibc")  # in-process: not preloaded
    assert out.splitlines()[5].split() == ["variant", "trainable", "median", "s", "x", "frozen",
                                           "round", "x", "cpu", "s", "GFLOPs", "FLOP", "x",
                                           "x", "floor", "+MB"]  # fmt: skip
    assert "memory 1/4: model, train" in err  # progress on stderr, not in the table
    assert "train: timing 0 + 1 rounds of 2 variants" in err
    report = tool.main([*argv, "--json", "--no-memory"])
    out, _ = capsys.readouterr()
    assert json.loads(out) == json.loads(json.dumps(report))
    assert set(tool.VARIANT_HELP) == set(benchmarking.VARIANTS)  # --help lists every variant
    with pytest.raises(ConfigError, match=r"--img-size 100: .* use e\.g\. --img-size 96"):
        tool.main([config, "--img-size", "100"])
    report = tool.main([*argv, "--json", "--no-memory", "--phases", "infer_merged"])
    capsys.readouterr()
    assert [k for k in report if k in tool.PHASE_NAMES] == ["infer_merged"]


def method_config(tmp_path: Path, name: str, adapter: str) -> str:
    """The tiny config with another adapter (a --methods config)."""
    text = TINY_CONFIG.format(rank=4).replace(
        "adapter=dict(type=MTLoRAConfig, shared_rank=4, task_rank=2, dropout=0.0)", adapter
    )
    text = "from mtlora_vision.adapters import MTLLoRAConfig, TALoRAPromptConfig\n" + text
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return str(path)


def test_benchmark_times_other_methods_side_by_side(tmp_path) -> None:
    tool = load_tool("benchmark")
    config = tiny_config(tmp_path)
    mtl = method_config(tmp_path, "mtl", "adapter=dict(type=MTLLoRAConfig, rank=4, branch_stage=2)")
    prompt = method_config(tmp_path, "prompt", "adapter=dict(type=TALoRAPromptConfig, rank=2)")
    argv = [config, "--methods", mtl, prompt, "--variants", "model", "frozen"]
    argv += ["--img-size", "64", "--iters", "1", "--warmup", "0", "--merged", "--no-memory"]
    report = tool.main(argv)
    assert report["methods"] == {"mtl": mtl, "prompt": prompt}
    for phase in ("train", "infer", "infer_merged"):
        assert set(report[phase]) == {"model", "frozen", "mtl", "prompt"}
    # Trainable parameters are those of the model each config builds.
    for name, path in (("model", config), ("mtl", mtl), ("prompt", prompt)):
        built = benchmarking.build_variant(benchmarking.load_cfg(path), "model", 64)
        assert report["train"][name]["trainable_params"] == benchmarking.count_trainable(built)
    # MTL-LoRA runs the branched stages once per task: more FLOPs than MTLoRA's shared stream.
    # Merged inference takes another path for MTLoRA (fewer FLOPs: shared updates folded in) and
    # MTL-LoRA (per-task weights formed on the fly: fewer FLOPs only with many tokens per image,
    # not at 64x64); prompts have nothing to merge.
    train, merged, infer = report["train"], report["infer_merged"], report["infer"]
    assert train["mtl"]["gflops"] > train["model"]["gflops"]
    assert merged["model"]["gflops"] < infer["model"]["gflops"]
    assert merged["mtl"]["gflops"] != infer["mtl"]["gflops"]
    assert merged["prompt"]["gflops"] == infer["prompt"]["gflops"]
    with pytest.raises(ConfigError, match="appear twice"):
        benchmarking.variant_specs(tool.parse_args([config, "--methods", mtl, mtl]))
    with pytest.raises(ConfigError, match="Unknown variant 'nope'"):
        benchmarking.variant_specs(tool.parse_args([config, "--variants", "nope"]))


def test_benchmark_lean_variants_recompute_the_parts_they_name(tmp_path):
    tool = load_tool("benchmark")
    config = tiny_config(tmp_path)
    cfg = benchmarking.load_cfg(config)
    for name, parts in (("model", {"norm", "gelu", "dropout"}), ("stored", set()),
                        ("lean", {"norm", "gelu", "dropout"}),
                        ("lean:gelu+dropout", {"gelu", "dropout"}),
                        ("lean:all", {"norm", "gelu", "dropout", "heads"})):  # fmt: skip
        model = benchmarking.build_variant(cfg, name, 64)
        assert model.backbone.recompute_elementwise == parts, name
    argv = [config, "--img-size", "64", "--iters", "1", "--warmup", "0", "--no-memory",
            "--phases", "train", "--threads", "1", "--json"]  # fmt: skip
    report = tool.main([*argv, "--variants", "model", "lean:gelu"])
    assert set(report["train"]) == {"model", "lean:gelu"}
    assert report["train"]["lean:gelu"]["gflops"] == report["train"]["model"]["gflops"]
    # A wrong part is an input error naming it, raised before any model is built.
    with pytest.raises(ConfigError, match=r"'lean:gelu\+nope'.*unknown part\(s\) \['nope'\]"):
        benchmarking.variant_specs(tool.parse_args([config, "--variants", "lean:gelu+nope"]))


def test_benchmark_checkpointed_variants_checkpoint_the_stages_they_name(tmp_path):
    config = tiny_config(tmp_path)
    cfg = benchmarking.load_cfg(config)
    for name, stages in (("model", (False,) * 4), ("checkpointed", (True,) * 4),
                         ("checkpointed:0+1", (True, True, False, False)),
                         ("checkpointed:3", (False, False, False, True))):  # fmt: skip
        model = benchmarking.build_variant(cfg, name, 64)
        assert model.backbone.grad_checkpointing == stages, name
        lean = {"norm", "gelu", "dropout"}  # the config's (the default); checkpointing adds heads
        heads = {"heads"} if any(stages) else set()
        assert model.backbone.recompute_elementwise == lean | heads, name
    for bad in ("checkpointed:4", "checkpointed:0+0", "checkpointed:one", "checkpointed:"):
        with pytest.raises(ConfigError, match=re.escape(f"Variant '{bad}'")):
            benchmarking.build_variant(cfg, bad, 64)


def test_benchmark_times_precisions_side_by_side_against_the_flop_floor(tmp_path):
    tool = load_tool("benchmark")
    argv = [tiny_config(tmp_path), "--img-size", "64", "--iters", "2", "--no-memory", "--threads",
            "1", "--variants", "model", "frozen", "checkpointed", "--precision", "fp32", "bf16",
            "--json"]  # fmt: skip
    report = tool.main(argv)
    train = report["train"]
    assert set(train) == {f"{v}@{p}" for v in ("model", "frozen", "checkpointed")
                          for p in ("fp32", "bf16")}  # fmt: skip
    assert report["precisions"] == {"fp32": "fp32 (asked)", "bf16": "bf16 autocast on cpu (asked)"}
    for precision in ("fp32", "bf16"):
        model, frozen = train[f"model@{precision}"], train[f"frozen@{precision}"]
        assert model["precision"] == precision
        assert model["ratio_vs_frozen"] == pytest.approx(model["median_s"] / frozen["median_s"])
        assert model["over_floor"] == pytest.approx(
            model["ratio_vs_frozen"] / model["flop_ratio_vs_frozen"]
        )
    bf16, fp32 = train["model@bf16"], train["model@fp32"]
    assert bf16["ratio_vs_fp32"] == pytest.approx(bf16["median_s"] / fp32["median_s"])
    assert "ratio_vs_fp32" not in fp32
    assert bf16["gflops"] == fp32["gflops"]  # FLOPs do not depend on the precision
    # Checkpointing runs the blocks' forward again: more FLOPs for the same step.
    assert train["checkpointed@fp32"]["gflops"] > fp32["gflops"]
