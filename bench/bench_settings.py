"""Benchmark: how long a bad configuration takes to be refused (settings validation in a fresh interpreter).

    .venv/bin/python bench/bench_settings.py [--runs 5]

Every DPO_* variable is validated before torch is imported, so a typo costs a fraction of a second, not a
model load. Goal: the median under 1 s on the 2-core dev machine. Prints the median and whether torch was
imported (it must not be).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 1.0
CODE = ("import time, sys; t = time.perf_counter(); from entrypoint.config.settings import load_settings; "
        "load_settings(); print(time.perf_counter() - t, 'torch' in sys.modules)")


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    seconds, torch_imported = [], False
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
        seconds.append(float(out[0]))
        torch_imported |= out[1] == "True"
    result = {"median_s": statistics.median(seconds), "runs": args.runs, "torch_imported": torch_imported,
              "goal_s": GOAL_S, "goal_met": statistics.median(seconds) < GOAL_S and not torch_imported}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
