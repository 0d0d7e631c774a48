"""Bad input and faults through the installed ``hwprune`` entry point (issue #11).

Runs every case of ``tests/bad_input_cases.py`` as a subprocess in an empty work folder, plus stop
signals (SIGTERM, SIGINT) sent to running commands, and writes one row per case to
``benchmarks/results/robustness.csv`` (``case,command,exit_code,one_line,output_unchanged``) and a
summary to ``robustness.md``. The goal: every row one line on stderr and exit 2 (0 where success is
right, 128 + the signal for a stop), with the work folder and the inputs left as they were.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/robustness.py
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.bad_input_cases import CASES, Case, command_of, judge, make_inputs, release_readonly, snapshot  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
COLUMNS = ["case", "command", "exit_code", "one_line", "output_unchanged"]
COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/robustness.py"

# commands stopped by a signal after they started working: 128 + signal, one line, nothing left
SIGNALLED = [
    (
        "prune_at_init_sigterm",
        signal.SIGTERM,
        4.0,
        lambda w: ["prune-at-init", "--pruner-list", "rand", "--compression-list", "2", "--epochs", "300",
                   "--results", str(w / "r.csv"), "--out", str(w / "sweep"), "--no-progress"],
    ),
    (
        "prune_at_init_sigint",
        signal.SIGINT,
        4.0,
        lambda w: ["prune-at-init", "--pruner-list", "rand", "--compression-list", "2", "--epochs", "300",
                   "--results", str(w / "r.csv"), "--out", str(w / "sweep"), "--no-progress"],
    ),
    (
        "demo_sigterm",
        signal.SIGTERM,
        4.0,
        lambda w: ["demo", "--model", "resnet20", "--repeats", "2000", "--threads", "1", "--out", str(w / "demo")],
    ),
    (
        "train_sigterm",
        signal.SIGTERM,
        4.0,
        lambda w: ["train", "--model", "vgg11", "--image-size", "32", "--epochs", "50", "--batch-size", "8",
                   "--result", str(w / "result.json")],
    ),
]  # fmt: skip


def entry_point() -> str:
    exe = shutil.which("hwprune", path=str(Path(sys.executable).parent)) or shutil.which("hwprune")
    if not exe:
        raise SystemExit("robustness: the hwprune entry point is not installed (pip install -e .)")
    return exe


def run_case(exe: str, case: Case, inputs, work: Path) -> dict:
    work.mkdir()
    before, inputs_before = snapshot(work), snapshot(inputs.root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [exe, *case.argv(inputs, work)], capture_output=True, text=True, cwd=work, env=env, timeout=600
    )
    verdict = judge(case, proc.returncode, proc.stderr, before, snapshot(work), work)
    return {
        "case": case.id,
        "command": command_of(case.argv(inputs, work)),
        "exit_code": proc.returncode,
        "one_line": verdict["one_line"],
        "output_unchanged": verdict["output_unchanged"] and snapshot(inputs.root) == inputs_before,
        "ok": verdict["exit_ok"] and verdict["one_line"] and verdict["output_unchanged"],
        "stderr": "\n".join(verdict["lines"]),
    }


def run_signalled(exe: str, name: str, sig: int, after_s: float, argv, work: Path) -> dict:
    work.mkdir()
    before = snapshot(work)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = argv(work)
    proc = subprocess.Popen(
        [exe, *args], cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    time.sleep(after_s)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    one = len(lines) == 1 and "interrupted" in lines[0]
    unchanged = snapshot(work) == before
    return {
        "case": name,
        "command": command_of(args),
        "exit_code": proc.returncode,
        "one_line": one,
        "output_unchanged": unchanged,
        "ok": proc.returncode == 128 + sig and one and unchanged,
        "stderr": "\n".join(lines),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="run the cases whose id contains this text")
    p.add_argument("--out", type=Path, default=RESULTS / "robustness.csv")
    args = p.parse_args()
    exe = entry_point()
    rows = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hwprune-robustness-") as tmp:
        tmp = Path(tmp)
        inputs = make_inputs(tmp / "inputs")
        try:
            for case in CASES:
                if args.only and args.only not in case.id:
                    continue
                row = run_case(exe, case, inputs, tmp / f"work-{case.id}")
                rows.append(row)
                print(
                    f"{'ok ' if row['ok'] else 'BAD'} {case.id:45s} exit {row['exit_code']:3d}  {row['stderr'][:110]}"
                )
            for name, sig, after_s, argv in SIGNALLED:
                if args.only and args.only not in name:
                    continue
                row = run_signalled(exe, name, sig, after_s, argv, tmp / f"work-{name}")
                rows.append(row)
                print(f"{'ok ' if row['ok'] else 'BAD'} {name:45s} exit {row['exit_code']:3d}  {row['stderr'][:110]}")
        finally:
            release_readonly(inputs.readonly)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([r["case"], r["command"], r["exit_code"], r["one_line"], r["output_unchanged"]])
    write_markdown(args.out.with_suffix(".md"), rows, seconds)
    bad = [r for r in rows if not r["ok"]]
    print(f"{len(rows)} cases, {len(rows) - len(bad)} as required, {len(bad)} not; {seconds:.0f} s -> {args.out}")
    return 1 if bad else 0


def write_markdown(path: Path, rows: list[dict], seconds: float) -> None:
    by_code: dict[int, int] = {}
    for r in rows:
        by_code[r["exit_code"]] = by_code.get(r["exit_code"], 0) + 1
    bad = [r for r in rows if not r["ok"]]
    commands = sorted({r["command"] for r in rows})
    lines = [
        f"Command: `{COMMAND}` ({len(rows)} cases through the installed `hwprune` entry point, {seconds:.0f} s).",
        "",
        "# Robustness: bad input and stop signals (issue #11)",
        "",
        "Each case runs `hwprune ...` in an empty work folder with prepared inputs (valid and broken masks, LUTs,",
        "journals, configs, ONNX and results files; a read-only folder; a file where a folder belongs). A case",
        "passes when it exits as required (2 for bad input, 0 where success is right, 128 + signal when stopped),",
        "stderr is exactly one line naming the problem, and the work folder and the inputs are unchanged (a",
        "success creates exactly its output files and prints no error line). Cases: `tests/bad_input_cases.py`;",
        "the same table runs in-process in `tests/test_bad_input.py`, with hypothesis corrupting masks, LUTs,",
        "configs and journals. Stop signals are sent a few seconds into a run (training, export, timing).",
        "",
        "| | count |",
        "|---|---:|",
        f"| cases | {len(rows)} |",
        f"| commands covered | {len(commands)} ({', '.join(commands)}) |",
        f"| one line on stderr | {sum(bool(r['one_line']) for r in rows)} |",
        f"| output folder and inputs unchanged | {sum(bool(r['output_unchanged']) for r in rows)} |",
        f"| as required (exit, one line, unchanged) | {len(rows) - len(bad)} |",
        *[f"| exit {code} | {n} |" for code, n in sorted(by_code.items())],
        "",
    ]
    if bad:
        lines += ["## Not as required", "", "| case | exit | stderr |", "|---|---:|---|"]
        lines += [f"| {r['case']} | {r['exit_code']} | {r['stderr'][:200].replace('|', '/')} |" for r in bad]
        lines.append("")
    lines += [
        "## Every case",
        "",
        "| case | command | exit | one line | unchanged | stderr |",
        "|---|---|---:|---|---|---|",
    ]
    for r in rows:
        err = r["stderr"].replace("|", "/").replace("\n", " / ")
        err = err if len(err) <= 160 else err[:157] + "..."
        lines.append(
            f"| {r['case']} | {r['command']} | {r['exit_code']} | {r['one_line']} | {r['output_unchanged']} | {err} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
