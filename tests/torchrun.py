"""Launch a script on two CPU ranks under torchrun, for the DDP tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Both DDP tests run in one pytest worker, one after the other: two torchrun jobs never share the
# two CI cores (a gating run hung for 300 s in CI once while the other worker was busy).
serial = pytest.mark.xdist_group("torchrun")

# Prepended to every script: a rank still running after this many seconds prints every thread's
# stack to stderr and exits, so a hang fails the test with where it hung instead of a bare timeout.
HANG_REPORT_S = 240
_PRELUDE = f"import faulthandler; faulthandler.dump_traceback_later({HANG_REPORT_S}, exit=True)\n"


def run_on_two_ranks(script: str, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Write ``script`` into ``workdir`` and run it on 2 gloo ranks; fails the test on a non-zero exit."""
    path = workdir / "ddp_script.py"
    path.write_text(_PRELUDE + script)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PJRT_DEVICE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(path), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_REPORT_S + 60)
    # the ranks' own output (stack dumps included) comes first, torchrun's summary last
    assert proc.returncode == 0, proc.stderr[:5000] + "\n...\n" + proc.stderr[-2000:]
    return proc
