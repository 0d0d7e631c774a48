"""What the training benchmarks share: a journal of finished runs (a rerun resumes from it) and digits loaders."""

from __future__ import annotations

import json
from pathlib import Path

from hwprune.data import get_dataset, make_loader


class Journal(list):
    """Rows of finished runs, appended to a JSON-lines file as they finish, read back on the next start."""

    def __init__(self, path: Path):
        self.path = path
        rows = path.read_text().splitlines() if path.exists() else []
        super().__init__(json.loads(line) for line in rows if line.strip())

    def record(self, **row) -> None:
        self.append(row)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def digits_loaders(size: int, batch: int, seed: int):
    """Digits at ``size`` px with 3 channels: shuffled training batches (by ``seed``), the test split in order."""
    train_set = get_dataset("digits", "train", image_size=size, channels=3)
    test_set = get_dataset("digits", "test", image_size=size, channels=3)
    return make_loader(train_set, batch, shuffle=True, seed=seed), make_loader(test_set, 256, shuffle=False)
