"""`python -m entrypoint --from-run <run dir | path/to/manifest.json | s3://.../manifest.json>`: a run again.

The recorded settings (config.json beside the manifest) apply under the environment: any DPO_* variable set
wins over them. Not re-applied: where results go and how they are published or reported (a rerun is a new run,
`<recorded run name>-rerun` by default, and never publishes over the original), the cache folder, and secrets
(config.json holds them redacted: the environment's value is used, or none). A Hub model or dataset is pinned to
the commit the recorded run loaded (DPO_MODEL_REVISION, DPO_DATASET_REVISION), unless the environment sets a
revision.

Before anything starts, every setting that differs from the record is printed (`DPO_X: recorded A, now B`), and
a different code version, commit or package version is a warning. Once the data is prepared, before the model is
loaded, `check_drift` compares the base model's and the data's identity with the record: a difference is exit 2,
naming it, unless DPO_ALLOW_DRIFT=1, which runs anyway with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entrypoint.config.names import REDACTED, env_name
from entrypoint.config.settings import JobSettings, is_secret, public_dict, setting_from, setting_names
from entrypoint.errors import ConfigError
from entrypoint.remote import hub
from entrypoint.run.outputs import CONFIG, MANIFEST
from entrypoint.run.paths import run_paths

log = logging.getLogger("entrypoint.rerun")

# Recorded settings a rerun does not take over: where its results go, publishing and reporting, machine-local
# folders, and facts about the recorded run's environment rather than its recipe.
NOT_REAPPLIED = {"output_dir", "checkpoint_dir", "run_name", "cache_dir", "resume", "s3_uri", "hub_repo",
                 "hub_private", "overwrite", "report_to", "log_format", "preset", "allow_drift", "image_digest",
                 "code_revision", "allow_cpu"}
NOT_SHOWN = {"preset", "allow_drift", "image_digest", "code_revision"}  # preset: its values are compared one by one
# What the prepared pairs depend on (data/stage.py's prepare_pairs, and the processor the model brings): when one of
# these differs from the record, different pairs are expected. A setting missing here errs on the safe side: exit 2.
PAIR_SETTINGS = ("model", "model_family", "model_revision", "dataset", "dataset_format", "dataset_columns",
                 "dataset_split", "dataset_revision", "image_dir", "max_samples", "eval_fraction", "max_eval_pairs",
                 "max_image_tiles", "image_max_pixels", "max_length", "seed", "eval_dataset", "eval_dataset_format",
                 "eval_dataset_columns", "eval_dataset_split", "eval_dataset_revision")
RERUN_SUFFIX = "-rerun"
FIX = "restore it, or set DPO_ALLOW_DRIFT=1 to run on what there is now"


def from_run_argument(argv: list[str]) -> tuple[str | None, list[str]]:
    """`--from-run RUN` or `--from-run=RUN`: (RUN, the other arguments); RUN is "" when missing."""
    for i, arg in enumerate(argv):
        if arg == "--from-run":
            return (argv[i + 1] if i + 1 < len(argv) else ""), argv[:i] + argv[i + 2:]
        if arg.startswith("--from-run="):
            return arg.partition("=")[2], argv[:i] + argv[i + 1:]
    return None, argv


@dataclass(frozen=True)
class Recorded:
    """A finished run as it was recorded: its manifest (with the run record under "provenance") and config.json."""

    where: str  # as given to --from-run
    manifest: dict[str, Any]
    config: dict[str, Any]
    run_dir: Path | None = None  # a local run directory
    pins: dict[str, str] = field(default_factory=dict)  # settings pinned to recorded Hub commits

    @property
    def run_record(self) -> dict[str, Any]:
        """What made it (run/record.py): manifest.json's "provenance"."""
        return self.manifest.get("provenance") or {}

    @property
    def run_name(self) -> str:
        return self.manifest.get("run_name") or self.config.get("run_name") or "run"


# ---- reading the record

def read(where: str) -> Recorded:
    """manifest.json and config.json of a run directory, a manifest's path, or an s3:// manifest (or run prefix).
    ConfigError: not there, unreadable, or config.json not the one the manifest lists."""
    if where.startswith("s3://"):
        manifest_bytes, config_bytes, run_dir = *_read_s3(where), None
    else:
        path = Path(where).expanduser()
        manifest_path = path / MANIFEST if path.is_dir() else path
        run_dir = manifest_path.parent
        try:
            manifest_bytes, config_bytes = manifest_path.read_bytes(), (run_dir / CONFIG).read_bytes()
        except OSError as exc:
            raise ConfigError(f"--from-run {where}: cannot read {exc.filename} ({exc.strerror}); give a finished "
                              f"run's directory or its {MANIFEST}") from None
    manifest, config = _json(where, MANIFEST, manifest_bytes), _json(where, CONFIG, config_bytes)
    listed = {entry["path"]: entry.get("sha256") for entry in manifest.get("files", [])}
    if listed.get(CONFIG) not in (None, hashlib.sha256(config_bytes).hexdigest()):
        raise ConfigError(f"--from-run {where}: {CONFIG} is not the one its {MANIFEST} lists (changed since the run)")
    return Recorded(where, manifest, config, run_dir)


def _read_s3(uri: str) -> tuple[bytes, bytes]:
    from entrypoint.remote import s3

    bucket, key = s3.parse_uri(uri)
    prefix = key.removesuffix(MANIFEST).rstrip("/")
    out = []
    for name in (MANIFEST, CONFIG):
        object_key = f"{prefix}/{name}" if prefix else name
        try:
            out.append(s3.client().get_object(Bucket=bucket, Key=object_key)["Body"].read())
        except Exception as exc:  # noqa: BLE001 - not there, no access: the user's to fix
            raise ConfigError(f"--from-run {uri}: cannot read s3://{bucket}/{object_key} "
                              f"({s3.describe_error(exc)})") from None
    return out[0], out[1]


def _json(where: str, name: str, data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f"--from-run {where}: {name} is not a JSON object")
    return value


# ---- applying it

def start(where: str, environ: MutableMapping[str, str] = os.environ) -> Recorded:
    """Read the record and put its settings in `environ` under the ones already there; returns the record, with
    the Hub revisions it pinned."""
    recorded = read(where)
    pins = pin_revisions(recorded, environ)
    apply(recorded, pins, environ)
    return Recorded(recorded.where, recorded.manifest, recorded.config, recorded.run_dir, pins)


def env_text(value: Any) -> str:
    """A setting's JSON value as an environment variable's text (settings.py reads it back to the same value)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def apply(recorded: Recorded, pins: dict[str, str], environ: MutableMapping[str, str]) -> None:
    given = {key.upper() for key in environ}
    known = set(setting_names())
    values = {**recorded.config, **pins}
    for name, value in values.items():
        if name not in known or name in NOT_REAPPLIED or is_secret(name) or value == REDACTED:
            continue
        if env_name(name) not in given:
            environ[env_name(name)] = env_text(value)
    if env_name("run_name") not in given:
        environ[env_name("run_name")] = recorded.run_name[:96 - len(RERUN_SUFFIX)] + RERUN_SUFFIX


def pin_revisions(recorded: Recorded, environ: MutableMapping[str, str]) -> dict[str, str]:
    """DPO_MODEL_REVISION / DPO_DATASET_REVISION / DPO_EVAL_DATASET_REVISION: the commits the recorded run loaded
    from the Hub, unless the environment sets a revision. A recorded commit the Hub no longer has is a ConfigError
    (DPO_ALLOW_DRIFT=1: a warning, and the recorded revision as it was asked for)."""
    given = {key.upper(): value for key, value in environ.items()}
    record = recorded.run_record
    pins = {}
    for setting, kind in (("model_revision", "model"), ("dataset_revision", "dataset"),
                          ("eval_dataset_revision", "eval_dataset")):
        commit = (record.get(kind) or {}).get("commit")
        if commit and given.get(env_name(setting)) == commit:  # pinned already (entrypoint.launch did, for its workers)
            pins[setting] = commit
        if not commit or env_name(setting) in given:
            continue
        repo = record[kind]["id"]
        if _on_hub(kind, repo, commit):
            pins[setting] = commit
        elif setting_from(environ, "allow_drift"):
            log.warning("DPO_ALLOW_DRIFT=1: %s %s's recorded commit %s is no longer on the Hub; using revision %s",
                        kind, repo, commit, recorded.config.get(setting) or "main")
        else:
            raise ConfigError(f"--from-run {recorded.where}: {kind} {repo}: the recorded commit {commit} is no longer "
                              f"on the Hub; set {env_name(setting)} to one that is, or DPO_ALLOW_DRIFT=1 to use "
                              f"{recorded.config.get(setting) or 'main'} as it is now")
    return pins


def _on_hub(kind: str, repo: str, commit: str) -> bool:
    """Whether the Hub still has that commit; offline, or when the Hub cannot be asked, assumed so (loading it
    then fails, or finds it in the cache)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if hub.offline():
        return True
    api = HfApi(token=hub.token())
    try:
        (api.model_info if kind == "model" else api.dataset_info)(repo, revision=commit)
    except (RevisionNotFoundError, RepositoryNotFoundError):
        return False
    except Exception:  # noqa: BLE001 - no network: not known to be gone
        return True
    return True


# ---- what differs, before anything starts

def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    return value if isinstance(value, str) else json.dumps(value)


def differences(recorded: Recorded, settings: JobSettings) -> list[str]:
    """`DPO_X: recorded A, now B` for each setting that differs from the record (a pinned revision is compared
    with the commit it pins), and the recorded settings this code no longer has."""
    now = public_dict(settings)
    lines = []
    for name, value in now.items():
        if name in NOT_SHOWN or is_secret(name):
            continue
        was = recorded.run_name if name == "run_name" else recorded.config.get(name)
        if name in recorded.pins and value == recorded.pins[name]:
            continue
        if value != was:
            lines.append(f"{env_name(name)}: recorded {_shown(was)}, now {_shown(value)}")
    gone = sorted(set(recorded.config) - set(now) - {"run_name", "sources", "dpo_config"})
    lines += [f"{env_name(name)}: recorded {_shown(recorded.config[name])}, no longer a setting" for name in gone]
    return lines


def code_warnings(recorded: Recorded, code_revision: str | None) -> list[str]:
    """A code version, commit, lock or package version other than the recorded one: the same settings may then
    train differently."""
    from entrypoint.run.record import code_record

    was = recorded.run_record.get("code")
    if not was:
        return ["warning: the record has no provenance (a run from before it was recorded): settings only, "
                "nothing pinned or checked"]
    now = code_record(code_revision)
    lines = []
    for key, what in (("version", "code version"), ("commit", "code commit")):
        if was.get(key) != now.get(key):
            lines.append(f"warning: {what}: recorded {_shown(was.get(key))}, now {_shown(now.get(key))}")
    if was.get("dirty") or now.get("dirty"):
        lines.append(f"warning: the code had uncommitted changes (recorded: {_shown(was.get('dirty'))}, now: "
                     f"{_shown(now.get('dirty'))}): its commit does not say all that ran")
    if (was.get("requirements_lock") or {}).get("sha256") != now["requirements_lock"]["sha256"]:
        lines.append("warning: requirements.lock differs from the recorded one")
    for package, version in (was.get("packages") or {}).items():
        if now["packages"].get(package) != version:
            lines.append(f"warning: {package}: recorded {_shown(version)}, now {_shown(now['packages'].get(package))}")
    return lines


def refuse_recorded_dirs(recorded: Recorded, settings: JobSettings) -> None:
    """A rerun never writes into the recorded run's directory or checkpoints."""
    paths = run_paths(settings)
    if recorded.run_dir is not None and paths.output_dir == recorded.run_dir.resolve():
        raise ConfigError(f"DPO_OUTPUT_DIR={paths.output_dir} is the recorded run's own directory; a rerun writes a "
                          f"new one: set another, or unset it (outputs/<DPO_RUN_NAME>)")
    taken = {recorded.config.get("checkpoint_dir"), str(recorded.run_dir / "checkpoints") if recorded.run_dir else None}
    if str(paths.checkpoint_dir) in taken:
        raise ConfigError(f"DPO_CHECKPOINT_DIR={paths.checkpoint_dir} holds the recorded run's checkpoints; set "
                          "another, or unset it (<output dir>/checkpoints)")


def announce(recorded: Recorded, settings: JobSettings, show: bool = True) -> None:
    """Refuse the recorded run's own directories (ConfigError); print what differs from the record (`show`)."""
    refuse_recorded_dirs(recorded, settings)
    if not show:
        return
    changed = differences(recorded, settings)
    print(f"from-run {recorded.where} (run {recorded.run_name}, {recorded.manifest.get('created', '?')}): "
          f"{len(changed)} setting(s) differ from the record", flush=True)
    for name, commit in recorded.pins.items():
        print(f"  {env_name(name)}={commit} (pinned: the commit the recorded run loaded)", flush=True)
    for line in [*changed, *code_warnings(recorded, settings.code_revision)]:
        print(f"  {line}", flush=True)


# ---- what the base model and data are now, once the data is prepared

def check_drift(recorded: Recorded, record: dict[str, Any], settings: JobSettings) -> None:
    """ConfigError naming what is no longer as recorded (base model, data files or objects, prepared pairs), unless
    DPO_ALLOW_DRIFT=1 (a warning)."""
    problems = drift(recorded, record, settings)
    if not problems:
        log.info("from-run: base model and data are as recorded")
        return
    if settings.allow_drift:
        log.warning("DPO_ALLOW_DRIFT=1: running although %s", "; ".join(problems))
        return
    raise ConfigError(f"--from-run {recorded.where}: {'; '.join(problems)}; {FIX}")


def drift(recorded: Recorded, record: dict[str, Any], settings: JobSettings) -> list[str]:
    """What differs from the record among what the settings still name the same way: the base model if DPO_MODEL
    (and its revision) is the recorded one, the data files if DPO_DATASET, its split and revision are; the pairs
    too if no setting they depend on changed (if one did, different pairs are expected: a warning)."""
    was, cfg = recorded.run_record, recorded.config
    if not was:
        return []

    def same(name: str) -> bool:
        return getattr(settings, name) in (cfg.get(name), recorded.pins.get(name, cfg.get(name)))

    problems = []
    if same("model") and same("model_revision"):
        problems += _model_drift(was["model"], record["model"])
    if same("dataset") and same("dataset_split") and same("dataset_revision"):
        problems += _source_drift(was["dataset"], record["dataset"])
        if was.get("eval_dataset") and record.get("eval_dataset") and same("eval_dataset") and \
                same("eval_dataset_split") and same("eval_dataset_revision"):
            problems += _source_drift(was["eval_dataset"], record["eval_dataset"])
        pairs = _pairs_drift(was["dataset"], record["dataset"])
        reshaped = _pair_setting_changes(recorded, settings)
        if reshaped and pairs:
            log.warning("from-run: %s (expected: %s changed)", "; ".join(pairs), ", ".join(reshaped))
        else:
            problems += pairs
    return problems


def _short(value: Any) -> str:
    return str(value)[:12] if value else "(none)"


def _model_drift(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    if was.get("commit") != now.get("commit"):
        return [f"base model {was['id']}: commit {_short(was.get('commit'))} recorded, now {_short(now.get('commit'))}"]
    old, new = (was.get("content") or {}).get("sha256"), (now.get("content") or {}).get("sha256")
    if old != new:
        return [f"base model {was['id']}: its files' sha256 {_short(old)} recorded, now {_short(new)}"]
    return []


def _source_drift(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    problems = []
    if was.get("commit") != now.get("commit"):
        problems.append(f"dataset {was['id']}: commit {_short(was.get('commit'))} recorded, now "
                        f"{_short(now.get('commit'))}")
    for kind, key, what in (("files", "path", "sha256"), ("objects", "key", "etag")):
        old = {entry[key]: entry for entry in was.get(kind) or []}
        new = {entry[key]: entry for entry in now.get(kind) or []}
        for name in sorted(set(old) | set(new)):
            if name not in new:
                problems.append(f"data {kind[:-1]} {name}: gone")
            elif name not in old:
                problems.append(f"data {kind[:-1]} {name}: not in the record")
            elif (old[name][what], old[name]["size"]) != (new[name][what], new[name]["size"]):
                problems.append(f"data {kind[:-1]} {name}: {what} {_short(old[name][what])} recorded, now "
                                f"{_short(new[name][what])}")
    return problems


def _pairs_drift(was: dict[str, Any], now: dict[str, Any]) -> list[str]:
    problems = []
    for split in ("train", "eval"):
        old, new = was.get(split) or {}, now.get(split) or {}
        if old.get("sha256") != new.get("sha256"):
            problems.append(f"{split} pairs: fingerprint {_short(old.get('sha256'))} ({old.get('pairs', 0)} pairs) "
                            f"recorded, now {_short(new.get('sha256'))} ({new.get('pairs', 0)} pairs)")
    return problems


def _pair_setting_changes(recorded: Recorded, settings: JobSettings) -> list[str]:
    """The settings the pairs depend on (PAIR_SETTINGS) whose value differs from the record."""
    now = public_dict(settings)
    return [env_name(name) for name in PAIR_SETTINGS
            if now.get(name) != recorded.config.get(name) and now.get(name) != recorded.pins.get(name)]
