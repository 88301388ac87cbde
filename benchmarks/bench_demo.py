"""Wall time of `cohort demo` as a user runs it: the CLI in a fresh subprocess, default settings, each run in its own
temp output directory; also the demo's own closing comparison (federated DP vs local-only DP vs centralized) as it
printed it, so the quality side of the demo is recorded next to its time.

    python benchmarks/bench_demo.py [--runs 2] [--data synthetic|cdnow] [--doc]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_federated_cdnow import load_average, machine, update_subsection  # noqa: E402

TARGET_S = 120.0
MODELS = "federated, DP, calibrated|federated, DP|local only, DP|centralized, no DP"
ROW = re.compile(rf"│\s*(\S+)\s*│\s*({MODELS})\s*│\s*(\d+)\s*│\s*([\d.]+)\s*│\s*([-\d.]+)\s*│\s*([\d.]+)\s*│")


def cohort_command() -> list[str]:
    exe = shutil.which("cohort")
    return [exe] if exe else [sys.executable, "-m", "cohort.cli"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--data", default="synthetic", choices=("synthetic", "cdnow"))
    parser.add_argument("--doc", action="store_true")
    args = parser.parse_args(argv)
    cmd = cohort_command()
    load_start = load_average()
    walls, loads, tables = [], [], []
    for i in range(args.runs):
        out = Path(tempfile.mkdtemp(prefix="cohort-demo-bench-")) / "demo"
        env = dict(os.environ, COLUMNS="160")  # wide enough that rich prints table rows on one line
        started = time.perf_counter()
        proc = subprocess.run([*cmd, "demo", "--data", args.data, "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            raise SystemExit(f"cohort demo failed with exit code {proc.returncode}")
        rows = [m.groups() for m in ROW.finditer(proc.stdout)]
        walls.append(wall)
        loads.append(os.getloadavg()[0])
        tables.append(rows)
        print(f"run {i + 1}: {wall:.1f} s (load {loads[-1]:.2f}), exit 0", flush=True)
        for r in rows:
            print(f"   {r[0]:10s} {r[1]:20s} n={r[2]:>4s} AUC {r[3]} Gini {r[4]} MAPE {r[5]}")
        shutil.rmtree(out.parent, ignore_errors=True)
    median = statistics.median(walls)
    lines = [
        f"Command: `python benchmarks/bench_demo.py --runs {args.runs} --data {args.data}` (runs "
        f"`{' '.join(Path(c).name for c in cmd)} demo --data {args.data} --out <tmp>` as a subprocess, default "
        "settings: " + ("3 platforms × 1,500 users" if args.data == "synthetic" else "CDNOW, 23,570 customers in 3 "
                        "partners by first-purchase cohort") + ", two jobs × 3 rounds, ε=3 per job).",
        "",
        f"Machine: {machine()}; load average (1/5/15 min) {load_start} at start, {load_average()} at end.",
        "",
        f"Wall time: median **{median:.1f} s** over {args.runs} run(s) (" + ", ".join(f"{w:.1f}" for w in walls)
        + " s; 1-min load at the end of each run " + ", ".join(f"{x:.2f}" for x in loads) + f"); target < "
        f"{TARGET_S:.0f} s: {'met' if max(walls) < TARGET_S else 'missed'}.",
        "",
        "The demo's closing table (job 2's model; each partner's held-out eligible users; run by run):",
        "",
        "| run | partner | model | users | churn AUC | LTV Gini | decile MAPE |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, rows in enumerate(tables):
        for r in rows:
            lines.append(f"| {i + 1} | " + " | ".join(r) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    if args.doc:
        title = "`cohort demo` wall time and closing table" + ("" if args.data == "synthetic" else f" (--data {args.data})")
        update_subsection(title, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
