"""Every `DPO_*` setting, declared once: type, default, help, and whether it is secret.

Two kinds of settings share the `DPO_` prefix:
- job settings, declared in `JobSettings` below (model, data, LoRA, outputs, publishing);
- every field of TRL's `DPOConfig` (`DPO_BETA`, `DPO_LEARNING_RATE`, `DPO_MAX_STEPS`, ...), typed
  and documented by the dataclass itself (see `trainer_fields.py`). `TRAINING_DEFAULTS` holds the
  few defaults this job changes and `TRAINING_BOUNDS` the ranges it checks before any GPU time.

`load_settings()` validates all of it and raises `ConfigError` with one line naming the variable.
Nothing here imports torch: bad configuration fails in a fraction of a second.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from entrypoint.config.names import ENV_PREFIX, REDACTED, env_name, is_secret_field, is_trainer_field_info
from entrypoint.config.presets import PresetSource, preset_key
from entrypoint.config.trainer_fields import dpo_config_fields
from entrypoint.errors import ConfigError


class JobSettings(BaseSettings):
    """What to train, on what data, and where the results go."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, protected_namespaces=(), enable_decoding=False,
                                      extra="forbid", validate_default=False)

    # --- recipe
    preset: str | None = Field(None, description=(
        "A scenario recipe: the settings in `entrypoint/presets/<name>.yaml` (README, Presets) apply under any "
        "DPO_* variable set, which overrides them; an unknown name is exit 2, listing the presets. "
        "`--dry-run` prints where each setting came from (default, preset or env)."))
    # --- model
    model: str = Field("llava-hf/llava-v1.6-mistral-7b-hf", description=(
        "Base model: a Hub id, a local model directory, `tiny:<family>` (a tiny randomly initialised model "
        "built offline in seconds) or `shapes:<family>` (the published checkpoint's processor, chat template and "
        "module tree at narrow widths: real image-token counts on a CPU); families: llava-next, llava, idefics2, "
        "qwen2.5-vl, qwen3-vl, gemma3, causal-lm."))
    model_family: Literal["auto", "llava-next", "llava", "idefics2", "qwen2.5-vl", "qwen3-vl", "gemma3",
                          "causal-lm"] = Field("auto", description=(
        "Model family; `auto` reads it from the model's config.json."))
    model_revision: str | None = Field(None, description="Hub revision (branch, tag or commit) of the base model.")
    quantization: Literal["4bit", "8bit", "none"] = Field("4bit", description=(
        "Base-model quantization: `4bit` is QLoRA (nf4, double quantization), `8bit` LLM.int8, `none` full precision."))
    # --- data
    dataset: str = Field("openbmb/RLAIF-V-Dataset", description=(
        "Preference data: a Hub dataset id, `s3://bucket/key` (a file or a prefix), a local parquet/jsonl/json/csv "
        "file or directory, or `sample:<name>` (generated offline; names: rlaif-v, rlaif-v-photos, vqa-rad, text, "
        "rlhf-v, llava-conversations, pope)."))
    dataset_format: Literal["auto", "rlaif-v", "rlhf-v", "pope", "vqa-rad", "llava-conversations",
                            "preference"] = Field("auto", description=(
        "How rows become prompt/chosen/rejected pairs; `auto` picks it from the columns (formats and their columns: "
        "README, Data)."))
    dataset_columns: str = Field("", description=(
        "Column mapping for the `preference` format, e.g. `prompt=question,chosen=good,rejected=bad,image=img`."))
    dataset_split: str = Field("train", description="Dataset split to read.")
    dataset_revision: str | None = Field(None, description=(
        "Hub revision (branch, tag or commit) of a Hub dataset; `--from-run` pins the recorded commit."))
    image_dir: Path | None = Field(None, description=(
        "Folder that image paths in the data are relative to (LLaVA conversation JSON). Default: the folder of "
        "the data file (or the data folder itself)."))
    bad_rows: Literal["skip", "fail"] = Field("skip", description=(
        "A row that cannot be used (missing or empty text, chosen equal to rejected, a missing or unreadable image, "
        "wrong types, over the token budget): `skip` drops it and counts its reason in data_report.json; `fail` "
        "stops at the first one (exit 2, naming the row and the reason)."))
    max_bad_fraction: float = Field(0.05, ge=0, le=1, description=(
        "Most of the rows that may be bad (every reason but the token budget, which has DPO_MAX_DROP_FRACTION) "
        "before the job refuses to start (exit 2, with the top reasons and example rows)."))
    max_samples: int | None = Field(None, gt=0, description=(
        "Use at most this many rows (after shuffling with the seed)."))
    eval_fraction: float = Field(0.05, ge=0, lt=1, description=(
        "Fraction of pairs held out for evaluation, by group: pairs that share an image (by content) or a prompt go "
        "to the same side, so nothing the eval pairs show was trained on. Not used with DPO_EVAL_DATASET."))
    max_eval_pairs: int = Field(256, gt=0, description=(
        "At most this many eval pairs (with DPO_EVAL_DATASET, of its rows, drawn with the seed); every evaluation "
        "uses them: before, during (DPO_EVAL_STEPS) and after training, likelihood preference, yes/no and task "
        "accuracy, base and tuned."))
    max_drop_fraction: float = Field(0.1, ge=0, le=1, description=(
        "Most of the pairs the token budget may drop (prompt with its image tokens reaching DPO_MAX_LENGTH) "
        "before the job refuses to start (exit 2, naming the setting that keeps them)."))
    # --- evaluation set
    eval_dataset: str | None = Field(None, description=(
        "A separate evaluation set, read like DPO_DATASET (Hub id, s3://, local files, `sample:<name>`; the same "
        "image cleaning, bad-row reasons and token budget): base vs tuned, and the evaluations during training, are "
        "measured on it instead of a split of DPO_DATASET, which is then trained on whole (DPO_EVAL_FRACTION is not "
        "used), less the pairs that share an image or a prompt with it. Preference rows give likelihood preference; "
        "yes/no questions (POPE: lmms-lab/POPE, split test) accuracy, precision, recall, F1 and yes share, overall "
        "and by category."))
    eval_dataset_format: Literal["auto", "rlaif-v", "rlhf-v", "pope", "vqa-rad", "llava-conversations",
                                 "preference"] = Field("auto", description=(
        "How DPO_EVAL_DATASET's rows become pairs, as DPO_DATASET_FORMAT; `auto` picks it from the columns."))
    eval_dataset_columns: str = Field("", description=(
        "Column mapping of DPO_EVAL_DATASET for the `preference` format, as DPO_DATASET_COLUMNS."))
    eval_dataset_split: str = Field("train", description=(
        "Split of DPO_EVAL_DATASET to read (benchmarks on the Hub publish `test`: lmms-lab/POPE's only split)."))
    eval_dataset_revision: str | None = Field(None, description=(
        "Hub revision (branch, tag or commit) of DPO_EVAL_DATASET; `--from-run` pins the recorded commit."))
    # --- images
    max_image_tiles: int | None = Field(None, gt=0, description=(
        "Image tokens: LLaVA-NeXT keeps only the grid pinpoints of at most this many tiles beside the base image, "
        "in the processor and the model config alike (1: ~1,200 tokens an image instead of up to ~2,900); "
        "Idefics2 splits images into 4 crops only at 4 or more; Gemma 3 adds pan-and-scan crops of wide or tall "
        "images, at most this many, from 2 (off as it ships); LLaVA 1.5 always takes 576; Qwen2.5-VL and Qwen3-VL "
        "have no tiles (refused: DPO_IMAGE_MAX_PIXELS is their setting). Unset: the model's own."))
    image_max_pixels: int | None = Field(None, ge=1024, description=(
        "Shrink every image to at most this many pixels (width x height), aspect ratio kept, before the "
        "processor: less time and memory for every family; LLaVA-NeXT's anyres picks smaller grids for smaller "
        "images (at 112896 = 336x336, about as few tokens as DPO_MAX_IMAGE_TILES=2). Qwen2.5-VL and Qwen3-VL: "
        "their processor's max_pixels (published 12845056 and 16777216: up to 16,384 tokens an image), one token "
        "per 28x28 (Qwen3-VL 32x32) pixels, e.g. 802816 for at most 1,024 (Qwen3-VL 1048576)."))    # --- LoRA
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    lora_target_modules: str = Field("all-linear", description=(
        "LoRA targets: `all-linear` or a comma-separated list of module names."))
    lora_vision: bool = Field(False, description=(
        "Also adapt the vision tower and projector (by default only the language model is adapted)."))
    train_projector: bool = Field(False, description=(
        "Train the projector between the vision tower and the language model in full (PEFT modules_to_save: "
        "the adapter carries its weights) while the vision tower stays frozen (with DPO_LORA_VISION: LoRA on the "
        "tower, the projector in full); vision-language families only."))
    encode_images_once: bool = Field(True, description=(
        "Process and encode each image once a step, shared by the chosen and rejected answers and the reference "
        "model (TRL does it four times), while the vision tower is frozen; false: TRL's own path."))
    # --- on-policy rounds (README, On-policy rounds)
    rounds: int = Field(0, ge=0, description=(
        "On-policy rounds (RLAIF-V's loop): each samples answers to every training prompt from the current policy, "
        "judges them, pairs them and trains a DPO round on those pairs, continuing the adapter. 0: DPO on the "
        "dataset's own pairs."))
    samples_per_prompt: int = Field(4, ge=2, description="Answers sampled a prompt in each round (DPO_ROUNDS).")
    sample_temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rounds' answers.")
    sample_max_new_tokens: int = Field(64, ge=1, description=(
        "Longest sampled answer in tokens (rounds), and of the held-out prompts' greedy answers the rounds score."))
    pairs_per_prompt: int = Field(2, ge=1, description=(
        "Most pairs a prompt gives in a round: best against worst, then inwards; equal scores never pair."))
    mix_dataset_pairs: bool = Field(False, description=(
        "Train each round on the dataset's own pairs too, beside the round's sampled ones (a policy that cannot "
        "answer yet learns first from them)."))
    round_reference: Literal["previous", "base"] = Field("previous", description=(
        "Each round's DPO reference: `previous`, the policy the round starts from (the previous round's, as "
        "RLAIF-V's rounds do), or `base`, the base model in every round."))
    sampler: Literal["transformers", "openai"] = Field("transformers", description=(
        "Who samples the rounds' answers: `transformers`, the job's own model (in-process `generate`); `openai`, an "
        "OpenAI-compatible chat endpoint (DPO_SAMPLER_URL), e.g. vLLM serving the base model with each round's "
        "adapter loaded through its LoRA API."))
    sampler_url: str | None = Field(None, description=(
        "DPO_SAMPLER=openai: the endpoint's base URL, e.g. http://localhost:8000/v1."))
    sampler_model: str | None = Field(None, description=(
        "DPO_SAMPLER=openai: the model name the endpoint serves the base under (default: DPO_MODEL)."))
    sampler_api_key: str | None = Field(None, json_schema_extra={"secret": True}, description=(
        "DPO_SAMPLER=openai: the endpoint's API key, if it needs one."))
    judge: Literal["ground-truth", "model", "openai"] = Field("ground-truth", description=(
        "Who scores the rounds' answers: `ground-truth`, the row's own right answer (a format that holds one, e.g. "
        "vqa-rad): yes/no by exact match, token F1 otherwise; `model`, RLAIF-V's divide and conquer with a judge "
        "model the job loads (DPO_JUDGE_MODEL): each claim of an answer asked as a yes/no question about the image, "
        "the score minus the claims judged false; `openai`, an OpenAI-compatible chat endpoint (DPO_JUDGE_URL)."))
    judge_model: str | None = Field(None, description=(
        "DPO_JUDGE=model: the judge model (any supported family, a Hub id, a local path or `tiny:<family>`), "
        "loaded in DPO_QUANTIZATION; DPO_JUDGE=openai: the model name at the endpoint."))
    judge_url: str | None = Field(None, description=(
        "DPO_JUDGE=openai: the endpoint's base URL, e.g. http://localhost:8001/v1."))
    judge_api_key: str | None = Field(None, json_schema_extra={"secret": True}, description=(
        "DPO_JUDGE=openai: the endpoint's API key, if it needs one."))
    endpoint_retries: int = Field(5, ge=0, description=(
        "Retries of a failed request to a sampler or judge endpoint (exponential backoff) before the job stops; "
        "what it finished is kept and a restart goes on from there."))
    endpoint_timeout_s: float = Field(120.0, gt=0, description="Seconds a request to an endpoint may take.")
    endpoint_concurrency: int = Field(8, ge=1, description="Requests in flight at once to an endpoint.")
    # --- run and outputs
    output_dir: Path | None = Field(None, description=(
        "Run directory: adapter/, metrics.json, config.json, manifest.json. Default: outputs/<run name>."))
    merge: bool = Field(False, description=(
        "Also write the adapter merged into the base model (the 4-bit/8-bit base dequantized first) as a plain "
        "bf16 model under merged/ in the run directory: loads with transformers alone, no PEFT. Uploaded to "
        "DPO_S3_URI with the run; the Hub repo gets the adapter only."))
    run_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$", description=(
        "Name of the run (letters, digits, . _ -). Default: derived from the model and dataset."))
    cache_dir: Path = Field(Path("~/.cache/dpo-job"), description=(
        "Downloads, generated samples and tiny models. On the cloud, a disk that survives restarts."))
    seed: int = Field(42, ge=0, description="Seed for data shuffling, the split and training.")
    checkpoint_dir: Path | None = Field(None, description=(
        "Checkpoints of this run (default <output dir>/checkpoints). On spot machines, a bucket mount: "
        "a restarted job resumes from the newest complete checkpoint there."))
    resume: Literal["auto", "never"] = Field("auto", description=(
        "`auto`: resume from this run's checkpoints when they exist (refused if the settings that shape "
        "training changed); `never`: start over, removing this run's checkpoints, state and prepared data from the "
        "checkpoint directory (nothing else in it)."))
    # --- publishing and tracking
    s3_uri: str | None = Field(None, pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", description=(
        "Upload the run directory to s3://bucket/prefix (manifest.json last, every object verified). Set or changed "
        "after the run finished, a rerun publishes there without training again."))
    hub_repo: str | None = Field(None, pattern=r"^[\w.-]+/[\w.-]+$", description=(
        "Push the adapter and its model card to this Hub model repo (org/name), using HF_TOKEN; like DPO_S3_URI, "
        "a rerun publishes to one added later."))
    hub_private: bool = Field(True, description="Create the Hub repo as private.")
    overwrite: bool = Field(False, description=(
        "Replace a different run already published under DPO_S3_URI (otherwise refused with exit 2)."))
    distributed: Literal["ddp", "deepspeed-zero2", "fsdp"] = Field("ddp", description=(
        "Multi-GPU strategy when several processes run: DDP, or FSDP (QLoRA-compatible: 4-bit weights sharded). "
        "`deepspeed-zero2` was removed (its package was never in the image): it stops the launcher with exit 2."))
    log_format: Literal["text", "json"] = Field("text", description=(
        "Log lines as text, or one JSON object per line (for log collectors)."))
    report_to: Literal["none", "wandb"] = Field("none", description=(
        "Experiment tracking. `wandb` reads WANDB_API_KEY / WANDB_PROJECT / WANDB_MODE as usual."))
    allow_cpu: bool = Field(False, description=(
        "Train on the CPU although this machine has GPUs torch cannot use (an NVIDIA driver older than torch's CUDA "
        "needs, R580 for the CUDA 13 build): otherwise that is exit 2 at start-up, naming the driver found and the "
        "one needed."))
    memory_check: bool = Field(True, description=(
        "On a GPU, refuse to start (exit 2) when the memory plan says the run does not fit; `false` starts anyway."))
    peer_timeout_s: float = Field(30.0, gt=0, description=(
        "Several processes: a rank that has not answered for this long (its node was lost, or hangs) ends the "
        "others with exit 1, instead of their waiting for the collective's 30-minute timeout."))
    eval_generations: int = Field(2, ge=0, description=(
        "Eval prompts whose greedy answers, base and tuned, are shown side by side (report.html, metrics.json, "
        "wandb). With a format that holds the right answer (vqa-rad) every open question is answered too, for task "
        "accuracy; yes/no questions are scored by the model's yes and no tokens instead (no answer generated)."))
    # --- provenance and reruns (README, Reproducing a run)
    allow_drift: bool = Field(False, description=(
        "With `--from-run`: run even though the recorded base model, data files or prepared pairs are no longer what "
        "they were, or a pinned Hub revision is gone (a warning names what changed); otherwise that is exit 2, "
        "before the model is loaded. No effect without `--from-run`."))
    image_digest: str | None = Field(None, pattern=r"^([^@\s]+@)?sha256:[0-9a-f]{64}$", description=(
        "Digest of the container image the job runs in (`sha256:...` or `name@sha256:...`), recorded in "
        "manifest.json's provenance: set it where the image is started (SkyPilot YAML, CI), since an image cannot "
        "know its own digest. Describes the run, never changes it."))
    code_revision: str | None = Field(None, description=(
        "Git commit of the code, recorded in manifest.json's provenance when the code does not run from a git "
        "checkout: the image sets it at build time (`make image` passes the checkout's commit). In a checkout, "
        "`git rev-parse HEAD` is recorded instead."))

    @field_validator("model", "dataset", "eval_dataset")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value.strip() if value is not None else None

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: arguments, the environment, then DPO_PRESET's recipe, then the defaults."""
        return init_settings, env_settings, dotenv_settings, file_secret_settings, PresetSource(settings_cls)


# Defaults this job changes from DPOConfig's, with why.
TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 5e-6,  # LoRA DPO; DPOConfig's 1e-6 is tuned for full fine-tuning
    "per_device_train_batch_size": 2,  # a 7B VLM with several image tiles per pair on one A100
    "per_device_eval_batch_size": 2,
    "gradient_accumulation_steps": 8,
    "max_length": 4096,  # LLaVA-NeXT's anyres images take up to ~2900 tokens; cutting them is an error
    "logging_steps": 10,
    "save_steps": 100,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,  # below 1: a fraction of the total steps
}


def _known_losses(value: list[str]) -> list[str]:
    """DPOConfig takes any loss name, and DPOTrainer fails on an unknown one at its first step, with the
    model loaded: the names DPOConfig's help lists are checked here instead."""
    known = re.findall(r"`'(\w+)'`", dpo_config_fields()["loss_type"].help)
    if not value:
        raise ValueError("name at least one loss, e.g. sigmoid")
    unknown = [name for name in value if name not in known]
    if known and unknown:
        raise ValueError(f"unknown loss {unknown[0]!r}; TRL's losses: {', '.join(known)}")
    return value


# Ranges (and names) checked before any model is loaded.
TRAINING_BOUNDS: dict[str, Any] = {
    "loss_type": AfterValidator(_known_losses),
    "beta": Field(gt=0),
    "learning_rate": Field(gt=0),
    "num_train_epochs": Field(gt=0),
    "per_device_train_batch_size": Field(gt=0),
    "per_device_eval_batch_size": Field(gt=0),
    "gradient_accumulation_steps": Field(gt=0),
    "max_length": Field(gt=0),
    "save_steps": Field(gt=0),
    "save_total_limit": Field(gt=0),
    "logging_steps": Field(gt=0),
}
_FIXED_BY_JOB = {"output_dir", "run_name", "seed", "report_to"}  # declared above with the job's meaning


def _is_secret_name(name: str) -> bool:
    """Credentials among DPOConfig's fields (hub_token); `pad_token` is a token of the vocabulary."""
    return bool(re.search(r"(_token|secret|password|api_key)$", name)) and name != "pad_token"


def _training_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, spec in dpo_config_fields().items():
        if name in _FIXED_BY_JOB or spec.annotation is None:
            continue
        annotation = spec.annotation
        if name in TRAINING_BOUNDS:
            annotation = Annotated[annotation, TRAINING_BOUNDS[name]]
        extra = {"secret": True} if _is_secret_name(name) else {}
        extra["trainer"] = True
        fields[name] = (annotation, Field(TRAINING_DEFAULTS.get(name, spec.default), description=spec.help,
                                          json_schema_extra=extra))
    return fields


def _accepts(annotation: Any, kind: type) -> bool:
    """Whether a field's type (or one member of its union) is `kind`, e.g. list for `list[str] | None`."""
    if get_origin(annotation) is Annotated:
        return _accepts(get_args(annotation)[0], kind)
    members = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return any(member is kind or get_origin(member) is kind for member in members)


def _decode_text(cls: type, value: Any, info: Any) -> Any:
    """Env values are text: JSON for lists/dicts (`["sigmoid","sft"]`), or `a,b` for a list."""
    if not isinstance(value, str):
        return value
    annotation = cls.model_fields[info.field_name].annotation
    text = value.strip()
    if text == "" and type(None) in get_args(annotation):  # e.g. DPO_LOSS_WEIGHTS= unsets a preset's weights
        return None
    if text[:1] in ("[", "{") and (_accepts(annotation, list) or _accepts(annotation, dict)):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg})") from None
    if _accepts(annotation, list) and not _accepts(annotation, str):
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _build_settings_class() -> type[JobSettings]:
    unknown = (set(TRAINING_DEFAULTS) | set(TRAINING_BOUNDS)) - set(dpo_config_fields())
    if unknown:  # TRL renamed or dropped a field this job sets
        raise RuntimeError(f"not DPOConfig fields: {sorted(unknown)}")
    return create_model("Settings", __base__=JobSettings, **_training_fields(),
                        __validators__={"_decode_text": field_validator("*", mode="before")(_decode_text)})


Settings = _build_settings_class()


def setting_names() -> list[str]:
    return list(Settings.model_fields)


def is_secret(field: str) -> bool:
    return is_secret_field(Settings.model_fields[field])


def is_trainer_field(field: str) -> bool:
    return is_trainer_field_info(Settings.model_fields[field])


def _check_unknown(environ: dict[str, str]) -> None:
    valid = {env_name(name) for name in setting_names()}
    for key in sorted(environ):
        upper = key.upper()
        if upper.startswith(ENV_PREFIX) and upper not in valid:
            close = difflib.get_close_matches(upper, valid, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else "; see `python -m entrypoint --help`"
            raise ConfigError(f"{key}: unknown setting{hint}")


def _describe(error: dict[str, Any], environ: dict[str, str]) -> str:
    field = str(error["loc"][0]) if error["loc"] else "?"
    name = env_name(field)
    given = environ.get(name)
    shown = REDACTED if (given is not None and is_secret(field)) else given
    message = error["msg"]
    if error["type"] == "literal_error":
        message = "must be one of " + error["ctx"]["expected"]
    elif error["type"] == "value_error":
        message = str(error["ctx"]["error"])
    prefix = f"{name}={shown!r}" if shown is not None else name
    if given is None:  # not in the environment: the value may be the preset's
        where = preset_key(environ, field, Settings.model_fields)
        prefix = f"{where}={error['input']!r}" if where else prefix
    return f"{prefix}: {message[0].lower()}{message[1:]}"


def load_settings() -> JobSettings:
    """Read and validate every DPO_* variable; raise ConfigError naming the first bad one."""
    environ = {key.upper(): value for key, value in os.environ.items()}
    _check_unknown(environ)
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], environ)) from None


def trainer_overrides(settings: JobSettings) -> dict[str, Any]:
    """DPOConfig keyword arguments the user or this job set (the rest keep TRL's defaults)."""
    return {name: value for name, value in settings.model_dump().items()
            if is_trainer_field(name) and (name in settings.model_fields_set or name in TRAINING_DEFAULTS)}


def public_dict(settings: JobSettings) -> dict[str, Any]:
    """The resolved settings as JSON-safe values, secrets redacted: for config.json and trackers."""
    out: dict[str, Any] = {}
    for name, value in settings.model_dump(mode="json").items():
        if is_trainer_field(name) and name not in settings.model_fields_set and name not in TRAINING_DEFAULTS:
            continue  # TRL's own default: recorded by the trainer, not repeated here
        out[name] = REDACTED if (is_secret(name) and value is not None) else value
    return out


def secret_setting_values(settings: JobSettings) -> list[str]:
    """The values of DPO_* settings marked secret, for masking in logs."""
    return [str(v) for k, v in settings.model_dump().items() if is_secret(k) and v]


def setting_from(environ: Mapping[str, str], field: str) -> Any:
    """One setting as `load_settings` reads it from `environ` (its default when unset), by the same declaration and
    parser: for a decision made before the settings can be loaded (`--from-run` writes the record into the
    environment first). ConfigError naming the variable when the value is not valid."""
    info = Settings.model_fields[field]
    given = {key.upper(): value for key, value in environ.items()}.get(env_name(field))
    if given is None:
        return info.default
    try:
        kind = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        return TypeAdapter(kind).validate_python(given)
    except ValidationError as exc:
        raise ConfigError(_describe({**exc.errors()[0], "loc": (field,)}, {env_name(field): given})) from None
