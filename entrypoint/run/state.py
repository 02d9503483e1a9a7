"""`state.json` beside the checkpoints: which stages of this run are done, and with what settings.

A restarted job reads it to skip what is done (prepared data, finished training, publishing) and
to refuse resuming checkpoints that were made with settings that shape training differently.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from entrypoint.config.names import env_name
from entrypoint.config.settings import JobSettings, Settings, public_dict
from entrypoint.errors import ConfigError
from entrypoint.run.failed import FAILED
from entrypoint.run.outputs import write_json

STATE = "state.json"
PREPARED = "prepared"
# Settings that change where results go or how they are reported, not what is trained.
_NOT_TRAINING = {
    "output_dir", "checkpoint_dir", "cache_dir", "run_name", "resume", "s3_uri", "hub_repo", "hub_private",
    "overwrite", "distributed", "log_format", "report_to", "eval_generations", "logging_steps",
    "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "save_steps",
    "save_strategy", "save_total_limit", "save_only_model", "disable_tqdm", "dataloader_num_workers",
    "dataloader_prefetch_factor", "dataloader_persistent_workers", "dataloader_pin_memory", "push_to_hub",
    "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision",
    "per_device_eval_batch_size", "eval_strategy", "eval_steps", "eval_delay", "project",
    "trackio_space_id", "log_level", "log_level_replica", "log_on_each_node", "resume_from_checkpoint",
    "memory_check", "allow_cpu", "peer_timeout_s", "max_drop_fraction", "image_dir", "bad_rows", "max_bad_fraction",
    "merge",  # what is written after training (merged/), not what is trained
    "preset",  # the recipe's name; the values it sets are compared one by one
    "allow_drift", "image_digest", "code_revision",  # provenance (--from-run), not what is trained
}


def training_settings(settings: JobSettings) -> dict[str, Any]:
    """The settings a checkpoint depends on (secrets are redacted, so they never land in state.json)."""
    return {k: v for k, v in public_dict(settings).items() if k not in _NOT_TRAINING}


# What the job writes in a checkpoint directory: checkpoints, state.json and failed.json (and write_json's temporary
# copies), the prepared data (and its temporary copy).
_OWN = re.compile(rf"^(checkpoint-\d+|{re.escape(STATE)}|{re.escape(FAILED)}|{re.escape(PREPARED)})(\.tmp)?$"
                  rf"|^\.({re.escape(STATE)}|{re.escape(FAILED)})\.\w+$")


def remove_own_files(root: Path) -> list[str]:
    """DPO_RESUME=never: remove what this job wrote in its checkpoint directory (checkpoints, state.json, the
    prepared data, their temporary copies) and nothing else: on a bucket mount the folder may hold other
    things. Returns the names left alone."""
    kept = []
    for path in sorted(root.iterdir()):
        if not _OWN.match(path.name):
            kept.append(path.name)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return kept


def _default(key: str) -> Any:
    """A setting's default as state.json records it: what a state.json written before the setting existed trained
    with (a checkpoint from before DPO_ROUNDS resumes with DPO_ROUNDS=0). None for a key that is no setting."""
    field = Settings.model_fields.get(key)
    return None if field is None else json.loads(json.dumps(field.default, default=str))


class RunState:
    """Stages done so far, persisted atomically in `<checkpoint dir>/state.json`."""

    def __init__(self, root: Path, data: dict[str, Any], writer: bool, earlier: bool = False):
        self.root, self.data, self.writer = root, data, writer
        self.earlier = earlier  # an earlier attempt of this run wrote state.json: this one is a restart

    @classmethod
    def open(cls, root: Path, settings: JobSettings, writer: bool = True) -> RunState:
        """Load this run's state, or start one; DPO_RESUME=never wipes what a previous run left.

        Only the `writer` (rank 0) changes anything on disk; other ranks read.
        """
        current = training_settings(settings)
        path = root / STATE
        if settings.resume == "never" and root.exists() and writer:
            remove_own_files(root)
        if not path.is_file():
            return cls(root, {"settings": current, "stages": {}}, writer)
        data = json.loads(path.read_text())
        recorded = data["settings"]
        changed = sorted(k for k in set(current) | set(recorded)
                         if current.get(k) != (recorded[k] if k in recorded else _default(k)))
        if changed:
            first = changed[0]
            raise ConfigError(
                f"{root} holds checkpoints of this run made with other settings ({env_name(first)}: "
                f"{data['settings'].get(first)!r} -> {current.get(first)!r}"
                f"{f' and {len(changed) - 1} more' if len(changed) > 1 else ''}); set DPO_RESUME=never to "
                "start over, or use another DPO_RUN_NAME / DPO_CHECKPOINT_DIR")
        return cls(root, data, writer, earlier=True)

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def get(self, stage: str) -> Any:
        return self.data["stages"].get(stage)

    def mark(self, stage: str, info: Any = True) -> None:
        self.data["stages"][stage] = info
        if self.writer:
            write_json(self.root / STATE, self.data)

    @property
    def prepared_dir(self) -> Path:
        return self.root / PREPARED
