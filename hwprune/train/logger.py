"""Training logs: ``metrics.jsonl`` always, TensorBoard events when tensorboard is installed."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def _summary_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn(
            "tensorboard is not installed: writing metrics.jsonl only (pip install tensorboard for event files)",
            stacklevel=3,
        )
        return None
    return SummaryWriter(log_dir=str(log_dir))


class MetricsLogger:
    """Appends one JSON object per epoch to ``<log_dir>/metrics.jsonl`` and mirrors scalars to TensorBoard.

    Args:
        log_dir: Folder for the logs; None makes every call a no-op.
        tensorboard: Whether to try TensorBoard (a one-line warning when it is missing).
    """

    def __init__(self, log_dir: str | Path | None, tensorboard: bool = True) -> None:
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.writer = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self.writer = _summary_writer(self.log_dir)

    def log(self, epoch: int, values: dict[str, Any]) -> None:
        """Record ``values`` (numbers or None) for ``epoch`` (1-based: epochs completed)."""
        if self.log_dir is None:
            return
        with open(self.log_dir / METRICS_FILE, "a") as fh:
            fh.write(json.dumps({"epoch": epoch, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
