"""Finding and loading the base model and its processor: Hub id, local directory, `tiny:<family>` or
`shapes:<family>` (models built offline: tiny.py, shapes.py).

`resolve_model` is the cheap pre-flight (a config.json, no weights); `load_processor` and
`load_model` do the real work once the data is known to be good.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entrypoint.errors import ConfigError
from entrypoint.logs import duration, size_text
from entrypoint.models.families import FAMILIES, Family, family_from_config
from entrypoint.remote import hub
from entrypoint.remote.refs import is_built_offline, looks_local

log = logging.getLogger("entrypoint.model")
WEIGHT_SUFFIXES = (".safetensors", ".bin")  # counted in the size on disk logged before loading


@dataclass(frozen=True)
class ModelRef:
    """A base model that is known to exist: where to load it from, and its family."""

    source: str  # local directory or Hub id, as given to from_pretrained
    family: Family
    revision: str | None = None
    stands_for: str | None = None  # shapes: models: the published checkpoint whose geometry they have
    config_file: Path | None = None  # its config.json on disk (for a Hub id, the copy fetched by resolve_model)


def resolve_model(ref: str, family_name: str, revision: str | None, cache_dir: Path,
                  setting: str = "DPO_MODEL") -> ModelRef:
    """Check the model exists and learn its family, without loading weights; `setting` names it in messages
    (DPO_JUDGE_MODEL for the on-policy rounds' judge).

    `tiny:` and `shapes:` models are built into a model directory, then go the way any local directory goes:
    the family from its config.json (or DPO_MODEL_FAMILY), the same loading code."""
    stands_for = None
    if is_built_offline(ref):
        ref, stands_for = _built_offline(ref, cache_dir, setting)
    if looks_local(ref):
        path = Path(ref).expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(f"{setting}={ref}: no such model directory (no config.json in {path})")
        config = path / "config.json"
        source = str(path)
    else:
        config = _hub_config(ref, revision, setting)
        source = ref
    family = FAMILIES[family_name] if family_name != "auto" else family_from_config(config)
    return ModelRef(source, family, revision, stands_for=stands_for, config_file=config)


def _built_offline(ref: str, cache_dir: Path, setting: str = "DPO_MODEL") -> tuple[str, str | None]:
    """`tiny:<family>` or `shapes:<family>`, built into the cache on first use: its model directory, and for a
    `shapes:` model the published checkpoint it stands for."""
    from entrypoint.models.published import PUBLISHED
    from entrypoint.models.shapes import SHAPES_FAMILIES, build_shapes
    from entrypoint.models.tiny import TINY_FAMILIES, build_tiny

    kind, _, name = ref.partition(":")
    families, build = (TINY_FAMILIES, build_tiny) if kind == "tiny" else (SHAPES_FAMILIES, build_shapes)
    if name not in families:
        raise ConfigError(f"{setting}={ref!r}: unknown {kind} model; choose from "
                          f"{', '.join(f'{kind}:{f}' for f in families)}")
    return str(build(name, cache_dir / kind / name)), PUBLISHED[name].repo if kind == "shapes" else None


def model_width(model: ModelRef) -> int:
    """The language model's hidden size, from config.json (a vision-language model's text_config)."""
    import json

    config = json.loads(config_path(model).read_text())
    return int((config.get("text_config") or config).get("hidden_size") or 0)


def config_path(model: ModelRef) -> Path:
    """The model's config.json on disk: the one resolve_model found or fetched (no second Hub request), or
    the one in the model directory of a hand-made ModelRef."""
    return model.config_file or Path(model.source) / "config.json"


def _hub_config(repo_id: str, revision: str | None, setting: str = "DPO_MODEL") -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, "config.json", revision=revision, token=hub.token()))
    except Exception as exc:  # noqa: BLE001 - not found, gated, offline: the user's to fix
        raise ConfigError(f"{setting}={repo_id}: cannot read its config.json from the Hub "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def processor_class(family: Family) -> Any:
    """What loads the family's processor: AutoTokenizer (text), AutoProcessor, or the job's own image-only class
    (models/processors.py) for the processors AutoProcessor cannot load without torchvision."""
    from transformers import AutoProcessor, AutoTokenizer

    if family.image_only_processor:
        from entrypoint.models import processors

        return getattr(processors, family.image_only_processor)
    return AutoProcessor if family.vision else AutoTokenizer


def load_processor(model: ModelRef, max_image_tiles: int | None = None, max_pixels: int | None = None) -> Any:
    """The processor (vision) or tokenizer (text), with a pad token (DPO batches need padding), at most
    `max_image_tiles` tiles an image (DPO_MAX_IMAGE_TILES) and, for the families that resize to a pixel budget,
    at most `max_pixels` pixels (DPO_IMAGE_MAX_PIXELS): see image_tokens.py."""
    from entrypoint.models.image_tokens import limit_pixels, limit_tiles

    processor = processor_class(model.family).from_pretrained(model.source, revision=model.revision,
                                                              token=hub.token())
    tokenizer = getattr(processor, "tokenizer", processor)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.family.vision:
        limit_tiles(model.family, processor, max_image_tiles)
        limit_pixels(model.family, processor, max_pixels)
    return processor


def compute_dtype() -> Any:
    """bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU (bf16 matmuls are slow there)."""
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(quantization: str, family: Family, dtype: Any, sharded: bool = False) -> Any:
    """QLoRA's nf4 + double quantization; `sharded` (FSDP) stores the 4-bit weights in the compute
    dtype, which FSDP needs to flatten them with the rest."""
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        storage = {"bnb_4bit_quant_storage": dtype} if sharded else {}
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=family.keep_full_precision,
                                  **storage)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=family.keep_full_precision)
    return None


def device_map(sharded: bool) -> dict[str, Any] | None:
    """DDP: each process holds a whole copy on its own GPU (or the CPU); FSDP places it itself."""
    import torch
    from accelerate import PartialState

    if sharded:
        return None
    if torch.cuda.is_available():
        return {"": PartialState().local_process_index}
    return {"": "cpu"}


def load_model(model: ModelRef, quantization: str, distributed: str = "ddp", processor: Any = None) -> Any:
    """The base model, quantized as asked; its image geometry made to match `processor`'s, which feeds it."""
    import transformers

    from entrypoint.models.image_tokens import model_overrides

    dtype = compute_dtype()
    sharded = distributed == "fsdp"
    model_class = getattr(transformers, model.family.model_class)
    overrides = model_overrides(model.family, processor) if processor is not None else {}
    log.info("model: loading %s (%s, %s, %s)", model.source, model.family.name,
             "full precision" if quantization == "none" else quantization, _weights_on_disk(model))
    started = time.monotonic()
    loaded = model_class.from_pretrained(
        model.source, revision=model.revision, token=hub.token(), dtype=dtype,
        quantization_config=quantization_config(quantization, model.family, dtype, sharded),
        device_map=device_map(sharded), **overrides)
    _keep_present_layer_classes(loaded)
    keep_4bit_layers_differentiable(loaded)
    log.info("model: loaded in %s", duration(time.monotonic() - started))
    return loaded


def _weights_on_disk(model: ModelRef) -> str:
    """`weights 14.5 GiB on disk`: the weight files beside the config (a local model, or a Hub model's cached
    snapshot), or that a Hub model's weights are not in the cache yet."""
    folder = config_path(model).parent
    size = sum(path.stat().st_size for path in folder.glob("*") if path.name.endswith(WEIGHT_SUFFIXES)) \
        if folder.is_dir() else 0
    if size:
        return f"weights {size_text(size)} on disk"
    return "no weight files beside its config.json" if looks_local(model.source) else "weights to download first"


def keep_4bit_layers_differentiable(model: Any) -> None:
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer for its bf16 `gemv_4bit` kernel at the
    first eval-mode forward without grad (the evaluation before training, a generation) and keeps it so;
    training after that runs a kernel with no backward, and the LoRA gradients through it are wrong
    (tests/test_qlora_gradients.py). Turned off here; GPUs never take that path."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def _keep_present_layer_classes(model: Any) -> None:
    """FSDP wraps each class named in `_no_split_modules` and fails on one the model lacks: transformers
    merges CLIP's whole list (CLIPTextEmbeddings too) into LLaVA's, whose CLIP has no text tower."""
    present = {type(module).__name__ for module in model.modules()}
    model._no_split_modules = {name for name in model._no_split_modules or () if name in present}
