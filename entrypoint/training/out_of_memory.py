"""A CUDA out-of-memory while training or evaluating, made a message a person can act on (exit 3), not a traceback.

The same settings run out of memory the same way on the same GPU, so retrying cannot help. The message names where
it happened (the training step, or an evaluation), the batch it happened on (pairs, and tokens with padding), what
the memory plan expected against what the GPU has, and the settings that lower memory, each with the plan's
figure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.errors import OutOfMemory
from entrypoint.models.image_tokens import fewer_tokens_hint
from entrypoint.models.loading import ModelRef
from entrypoint.planning.memory import device_memory_gib, plan_for_run, reductions


@contextmanager
def explained(trainer: Any, settings: JobSettings, model_ref: ModelRef, processor: Any,
              report: dict[str, Any]) -> Iterator[None]:
    """Turn torch's OutOfMemoryError inside the block into OutOfMemory, with the message."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise OutOfMemory(message(exc, trainer, settings, model_ref, processor, report)) from exc


def message(exc: BaseException, trainer: Any, settings: JobSettings, model_ref: ModelRef, processor: Any,
            report: dict[str, Any]) -> str:
    state = trainer.state
    where = (f"training step {state.global_step + 1} of {state.max_steps}" if trainer.model.training
             else f"the evaluation at step {state.global_step}")
    shape = getattr(trainer, "batch_shape", None)
    batch = (f"a batch of {shape[0] // 2} pairs ({shape[0]} sequences x {shape[1]:,} tokens with padding)"
             if shape and len(shape) == 2 else "its first batch")
    arch, plan, _ = plan_for_run(settings, model_ref, processor, report.get("tokens"))
    device = device_memory_gib()
    has = f"this GPU's {device:.1f} GiB" if device else "the GPU's memory"
    hint = fewer_tokens_hint(model_ref.family, processor) if model_ref.family.vision else None
    fixes = "; ".join(reductions(arch, settings.quantization, plan, settings, hint))
    torch_says = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"the GPU ran out of memory in {where}, on {batch}: the memory plan expected {plan.with_context:.1f} GiB "
            f"of {has} ({torch_says}). To lower memory: {fixes}")
