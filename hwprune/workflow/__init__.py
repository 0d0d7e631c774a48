"""The orchestration behind `hwprune.api` and the CLI, one module per stage.

inputs (what is pruned) -> scoring (importances, ratio masks) -> budget (profile, closed loop) -> ship
(compact, verified ONNX, timed afresh, results row) -> finetune.
"""

from hwprune.workflow.budget import BUDGET_POINTS, prune_to_budget
from hwprune.workflow.closed_loop import BudgetOutcome, budget_verdict, closed_loop
from hwprune.workflow.inputs import ModelInput, OnnxInput
from hwprune.workflow.scoring import IMPORTANCE_SAMPLES, importance_batches, importance_scores, make_mask
from hwprune.workflow.ship import PruneOutcome, prune_export_measure, time_shipped

__all__ = [
    "BUDGET_POINTS",
    "IMPORTANCE_SAMPLES",
    "BudgetOutcome",
    "ModelInput",
    "OnnxInput",
    "PruneOutcome",
    "budget_verdict",
    "closed_loop",
    "importance_batches",
    "importance_scores",
    "make_mask",
    "prune_export_measure",
    "prune_to_budget",
    "time_shipped",
]
