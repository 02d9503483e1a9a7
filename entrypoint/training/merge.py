"""DPO_MERGE=1: the adapter merged into its base model, written as a plain bf16 model to `<output>/merged/`.

    merged/
      model.safetensors (or its shards + index)   bf16 weights: the base with the LoRA deltas (and the fully
                                                  trained projector of DPO_TRAIN_PROJECTOR) merged in
      config.json, generation_config.json         no quantization_config: it loads with transformers alone
      processor / tokenizer files                 the ones the adapter was trained with

How, following PEFT's advice for QLoRA: the base is loaded exactly as training loaded it (same quantization,
same image-grid overrides, `load_model`), then dequantized (transformers' `model.dequantize()`: every 4-bit or
8-bit linear layer becomes a plain one holding the very values the quantized forward computed with, in the
compute dtype), then the adapter is applied (`PeftModel.from_pretrained`) and merged (`merge_and_unload`), and
only then is the whole model cast to bf16 once and saved. The LoRA deltas are never merged into 4-bit
weights: that would re-quantize them and lose most of the update. With DPO_QUANTIZATION=none the base is
loaded in the compute dtype and merged the same way.

On a GPU the merge needs the base model in bf16 (2 bytes a parameter) at once; the job frees the training
model before it starts (`free_memory`). Only rank 0 merges, after the adapter is saved and before the
manifest, so the manifest lists merged/ and DPO_S3_URI uploads it with the rest of the run.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.models.loading import ModelRef, compute_dtype, load_model

log = logging.getLogger("entrypoint")


def free_memory() -> None:
    """Give the memory of models that are no longer referenced back (to the GPU's allocator too)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def merged_model(adapter_dir: Path, model_ref: ModelRef, settings: JobSettings, processor: Any) -> Any:
    """The base loaded as training loaded it, dequantized, with the adapter merged in; cast to bf16."""
    import torch
    from peft import PeftModel

    base = load_model(model_ref, settings.quantization, processor=processor)  # one process's device, never sharded
    if settings.quantization != "none":
        base = base.dequantize(dtype=compute_dtype())
        base.is_loaded_in_4bit = base.is_loaded_in_8bit = False  # dequantize() leaves these flags behind
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return merged.to(torch.bfloat16)


def write_merged(adapter_dir: Path, model_ref: ModelRef, settings: JobSettings, processor: Any,
                 merged_dir: Path) -> Path:
    """Write the merged model to `merged_dir` (replacing whatever an earlier attempt left there)."""
    started = time.perf_counter()
    shutil.rmtree(merged_dir, ignore_errors=True)
    model = merged_model(adapter_dir, model_ref, settings, processor)
    model.save_pretrained(merged_dir)
    processor.save_pretrained(merged_dir)
    size = sum(p.stat().st_size for p in merged_dir.rglob("*") if p.is_file())
    log.info("merged model (bf16, %.2f GB) written to %s in %.1f s", size / 1e9, merged_dir,
             time.perf_counter() - started)
    del model
    free_memory()
    return merged_dir
