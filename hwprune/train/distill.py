"""Knowledge distillation from the dense model while the pruned one is fine-tuned.

The loss becomes ``CE(student, y) + weight · T² · KL(softmax(teacher / T) || softmax(student / T))``
(Hinton et al.'s soft-target term, scaled by T² so its gradients keep their size as T grows). It is what
recovers accuracy in practice after structured pruning (Minitron; Torch-Pruning's examples).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.train.objective import Objective


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True) * temperature**2


class Distillation(Objective):
    """Adds ``weight`` times the distillation loss of each forward pass of ``student`` against ``teacher``.

    The student's input and output are read by a forward hook while the objective is open (use it as a
    context manager around training); the teacher runs in eval mode without gradients and is not changed.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, weight: float = 1.0, temperature: float = 4.0):
        if not weight >= 0 or not temperature > 0:
            raise HwpruneError(
                f"distillation needs a weight >= 0 and a temperature > 0 (got {weight} and {temperature})"
            )
        self.student, self.teacher = student, teacher
        self.weight, self.temperature = weight, temperature
        self._seen: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hook = None
        self._losses: list[float] = []

    def __enter__(self) -> Distillation:
        def remember(_module, inputs, output):
            self._seen = (inputs[0], output)

        self._hook = self.student.register_forward_hook(remember)
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()

    def extra_loss(self) -> torch.Tensor | None:
        if self._seen is None or not self.weight:
            return None
        x, student_logits = self._seen
        was_training = self.teacher.training
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        self.teacher.train(was_training)
        loss = distillation_loss(student_logits, teacher_logits, self.temperature)
        self._losses.append(float(loss.detach()))
        return self.weight * loss

    def epoch_metrics(self) -> dict:
        losses, self._losses = self._losses, []
        return {"distill_loss": sum(losses) / len(losses)} if losses else {}
