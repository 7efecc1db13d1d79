"""PromptWarmupHook: prompt adapters are in warm-up for the first N epochs of a real Runner."""

from __future__ import annotations

import pytest
import torch
from mmengine.dataset import DefaultSampler
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from mtlora_vision.adapters.prompt import TaskAdaptiveLowRankPrompt
from mtlora_vision.engine.prompt_warmup_hook import PromptWarmupHook, set_prompt_warmup

TASKS = ("semseg", "sal")
DIM, HEADS, WINDOW_TOKENS = 8, 2, 4


class _Queries(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        return {"q": torch.randn(HEADS, WINDOW_TOKENS, DIM // HEADS, generator=g)}


class _PromptModel(BaseModel):
    """The prompt residual of both tasks, pushed towards a fixed target."""

    def __init__(self, warmup_mode: str) -> None:
        super().__init__()
        self.prompt = TaskAdaptiveLowRankPrompt(
            DIM, HEADS, TASKS, num_tokens=4, rank=2, warmup_mode=warmup_mode
        )
        self.qkv = nn.Linear(DIM, 3 * DIM).requires_grad_(False)

    def forward(self, q: torch.Tensor, mode: str = "loss") -> dict:
        stacked = q.repeat(len(TASKS), 1, 1, 1)  # task-major (T * B, h, N, hd)
        out = self.prompt.residual(stacked, self.qkv.weight, self.qkv.bias)
        return {"loss": (out - 1.0).square().mean()}


class _GateRecorder(Hook):
    def __init__(self) -> None:
        self.gates: list[torch.Tensor] = []
        self.states: list[bool] = []

    def after_train_epoch(self, runner) -> None:
        self.gates.append(runner.model.prompt.prompt_gate_task.detach().clone())
        self.states.append(runner.model.prompt.warmup_active)


def _train(tmp_path, warmup_mode: str, hooks: list[Hook]) -> Runner:
    runner = Runner(
        model=_PromptModel(warmup_mode),
        work_dir=str(tmp_path),
        experiment_name=f"prompt_warmup_{warmup_mode}",
        train_dataloader=dict(
            dataset=_Queries(),
            batch_size=2,
            sampler=dict(type=DefaultSampler, shuffle=False),
            collate_fn=dict(type="default_collate"),
        ),
        train_cfg=dict(by_epoch=True, max_epochs=3),
        optim_wrapper=dict(optimizer=dict(type=torch.optim.SGD, lr=0.5)),
        default_hooks=dict(checkpoint=None, logger=dict(type="LoggerHook", interval=100)),
        custom_hooks=hooks,
        randomness=dict(seed=0),
        default_scope=None,
    )
    runner.train()
    return runner


def test_frozen_gate_stays_zero_during_warmup_then_learns(tmp_path):
    recorder = _GateRecorder()
    _train(tmp_path, "frozen_gate", [PromptWarmupHook(warmup_epochs=2), recorder])
    assert recorder.states == [True, True, False]
    assert torch.equal(recorder.gates[0], torch.zeros(HEADS))
    assert torch.equal(recorder.gates[1], torch.zeros(HEADS))
    assert recorder.gates[2].abs().min() > 0


def test_learn_gate_trains_the_gate_from_the_first_epoch(tmp_path):
    recorder = _GateRecorder()
    _train(tmp_path, "learn_gate", [PromptWarmupHook(warmup_epochs=2), recorder])
    assert recorder.states == [True, True, False]
    assert recorder.gates[0].abs().min() > 0


def test_hook_refuses_a_model_without_prompts_and_bad_lengths():
    with pytest.raises(ValueError, match="warmup_epochs"):
        PromptWarmupHook(warmup_epochs=-1)
    assert set_prompt_warmup(nn.Linear(2, 2), True) == 0
    runner = type("R", (), {"model": nn.Linear(2, 2)})()
    with pytest.raises(ValueError, match="no TaskAdaptiveLowRankPrompt"):
        PromptWarmupHook(warmup_epochs=1).before_train(runner)
