"""Results: the run-record schema and the process-safe CSV store.

This package must not import torch (tools and notebooks read results without it). FLOP counting,
which needs torch, lives in :mod:`hwprune.graph_mapper.flops`.
"""

from hwprune.results.schema import COLUMNS, MASK_KINDS, TARGET_KINDS, RunRecord, current_git_sha, utc_now_iso
from hwprune.results.store import ResultsStore

__all__ = [
    "COLUMNS",
    "MASK_KINDS",
    "TARGET_KINDS",
    "ResultsStore",
    "RunRecord",
    "current_git_sha",
    "utc_now_iso",
]
