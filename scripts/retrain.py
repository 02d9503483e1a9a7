"""Launch retraining on SkyPilot managed spot jobs: what .github/workflows/retrain.yml runs.

Which presets of data/datasets.yaml retrain depends on the event:
- workflow_dispatch: the chosen preset (dataset and max steps may be overridden);
- schedule: every preset marked `scheduled: true`;
- push (data/datasets.yaml changed on main): the presets whose entry changed since the previous commit.

Each run is named `<preset>-<commit>-<workflow run number>`: its checkpoints and results land in
RUN_BUCKET under that name, and a re-run of the same workflow resumes instead of starting over.
`--dry-run` prints the `sky jobs launch` command lines instead of running them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "data/datasets.yaml"


def presets_of(text: str | None) -> dict[str, dict]:
    return (yaml.safe_load(text) or {}).get("presets", {}) if text else {}


def previous_manifest(commit: str | None) -> str | None:
    """The manifest at `commit`, or None (first push of a branch, or the file is new)."""
    if not commit or set(commit) == {"0"}:
        return None
    shown = subprocess.run(["git", "show", f"{commit}:{MANIFEST}"], cwd=ROOT, capture_output=True, text=True,
                           check=False)
    return shown.stdout if shown.returncode == 0 else None


def planned(event: str, presets: dict[str, dict], preset: str | None, before: dict[str, dict] | None) -> list[str]:
    if event == "workflow_dispatch":
        if preset not in presets:
            raise SystemExit(f"error: unknown preset {preset!r}; {MANIFEST} has {', '.join(presets)}")
        return [preset]
    if event == "schedule":
        return [name for name, entry in presets.items() if entry.get("scheduled")]
    if event == "push":
        return [name for name, entry in presets.items() if before is None or before.get(name) != entry]
    raise SystemExit(f"error: unknown event {event!r}")


def launch_command(name: str, entry: dict, args: argparse.Namespace) -> list[str]:
    run_name = f"{name}-{args.commit[:8]}-{args.run_number}"
    envs = {"RUN_BUCKET": args.bucket, "DPO_RUN_NAME": run_name, "DPO_DATASET": args.dataset or entry["dataset"]}
    if args.max_steps:
        envs["DPO_MAX_STEPS"] = args.max_steps
    if args.results_uri:
        envs["DPO_S3_URI"] = f"{args.results_uri.rstrip('/')}/{run_name}"
    if args.hub_org:
        envs["DPO_HUB_REPO"] = f"{args.hub_org}/{run_name}"
    command = ["sky", "jobs", "launch", "--yes", "--detach-run", "--name", run_name, entry["sky"]]
    for key, value in envs.items():
        command += ["--env", f"{key}={value}"]
    return command + ["--secret", "HF_TOKEN", "--secret", "WANDB_API_KEY"]  # values from this environment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--event", required=True, help="GITHUB_EVENT_NAME")
    parser.add_argument("--commit", required=True, help="GITHUB_SHA")
    parser.add_argument("--run-number", required=True, help="GITHUB_RUN_NUMBER")
    parser.add_argument("--before", help="the commit before a push (github.event.before)")
    parser.add_argument("--preset", help="workflow_dispatch: the preset")
    parser.add_argument("--dataset", help="override the preset's DPO_DATASET")
    parser.add_argument("--max-steps", help="DPO_MAX_STEPS")
    parser.add_argument("--bucket", default=os.environ.get("RUN_BUCKET"), help="RUN_BUCKET (required)")
    parser.add_argument("--results-uri", default=os.environ.get("RESULTS_URI"), help="s3://... to publish to")
    parser.add_argument("--hub-org", default=os.environ.get("HUB_ORG"), help="push adapters to <org>/<run name>")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    if not args.bucket:
        raise SystemExit("error: RUN_BUCKET is not set (a repository variable: the bucket for checkpoints and results)")

    presets = presets_of((ROOT / MANIFEST).read_text())
    before = (presets_of(previous_manifest(args.before)) or None) if args.event == "push" else None
    names = planned(args.event, presets, args.preset, before)
    commands = [launch_command(name, presets[name], args) for name in names]
    if args.dry_run:
        print(json.dumps(commands, indent=1))
        return 0
    if not commands:
        print(f"nothing to retrain for {args.event}")
    for command in commands:
        print("+", " ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
