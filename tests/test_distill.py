"""Distillation from the dense model while fine-tuning: the loss by hand, and it pulls the student over."""

import math

import pytest
import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.train import TrainConfig, train
from hwprune.train.distill import Distillation, distillation_loss


def test_distillation_loss_matches_a_hand_computation():
    student = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    teacher = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    T = 2.0
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        p = [math.exp(v / T) / sum(math.exp(u / T) for u in t_row) for v in t_row]
        q = [math.exp(v / T) / sum(math.exp(u / T) for u in s_row) for v in s_row]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert distillation_loss(student, teacher, T).item() == pytest.approx(T**2 * total / 2, rel=1e-6)
    assert distillation_loss(teacher, teacher, T).item() == pytest.approx(0.0, abs=1e-7)


def test_the_objective_adds_weighted_soft_targets_of_the_last_forward_and_removes_its_hook():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    with Distillation(student, teacher, weight=0.5, temperature=3.0) as objective:
        out = student(x)
        want = 0.5 * distillation_loss(out, teacher(x).detach(), 3.0)
        assert torch.allclose(objective.extra_loss(), want)
        objective.extra_loss().backward()  # gradients reach the student only
        assert student.weight.grad is not None and teacher.weight.grad is None
    assert not student._forward_hooks  # closed: the hook is gone
    with pytest.raises(HwpruneError, match="temperature > 0"):
        Distillation(student, teacher, temperature=0.0)


def test_distilled_training_pulls_the_student_towards_the_teacher():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(256, 8)
    y = torch.randint(0, 4, (256,))  # labels unrelated to the teacher: only distillation points at it
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]

    def gap(distill_weight):
        torch.manual_seed(1)
        student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        config = TrainConfig(epochs=15, lr=0.05, batch_size=32, schedule="constant", weight_decay=0.0)
        with Distillation(student, teacher, distill_weight, temperature=2.0) as objective:
            train(student, batches, None, config, objective=objective)
        with torch.no_grad():
            return distillation_loss(student(x), teacher(x), 1.0).item()  # KL at T = 1

    assert gap(5.0) < 0.5 * gap(0.0)  # closer to the teacher with distillation than without


def test_prune_distils_its_fine_tuning_through_the_cli(tmp_path, capsys):
    from hwprune.cli import main

    argv = ["prune", "--model", "lenet5", "--flops", "0.5", "--data", "digits", "--out", str(tmp_path / "p")]
    code = main([*argv, "--distill", "1"])
    assert code == 2 and "give --finetune-epochs" in capsys.readouterr().err
    assert main([*argv, "--finetune-epochs", "1", "--distill", "1", "--distill-temperature", "2"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned 1 epoch(s), distilled from dense (weight 1, T 2)" in out
    assert "re-exported ONNX matches in onnxruntime" in out
