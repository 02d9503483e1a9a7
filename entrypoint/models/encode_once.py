"""Each image of a DPO step processed and encoded once (DPO_ENCODE_IMAGES_ONCE, on by default).

TRL's vision collator repeats every pair's images for the chosen and the rejected sequence, so the image
processor runs twice per image, and the vision tower sees each image four times a step: chosen and rejected,
for the policy and again for the reference (the same model with its adapter switched off). With the tower
frozen (and out of LoRA, the default), all four give the same features. Here:

- `OnceProcessor` wraps the collator's processor: a call whose second half of texts and images repeats the first
  (TRL's `[...] * 2`) is processed for the first half, and every output tensor repeated along its first dimension:
  the same batch, tensor for tensor.
- `share_image_features` wraps the frozen tower's forward: inputs whose second half repeats the first are encoded
  for the first half and the features repeated; a call with the same inputs as the last one (the reference pass
  of the same step, or an evaluation's) returns the last features. One tower forward per image a step, not four.

Losses and gradients match the plain path to float tolerance (tests/test_encode_once.py); the step time saved is
in bench/RESULTS.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger("entrypoint")


def _halves_repeat(values: list[Any]) -> bool:
    """A list whose second half is the first (the same objects, as TRL's `* 2` makes them)."""
    n = len(values) // 2
    return bool(n) and len(values) == 2 * n and all(a is b or a == b for a, b in zip(values[:n], values[n:],
                                                                                      strict=True))


def _rebuilt(value: Any, tensor: Callable[[Any], Any]) -> Any:
    """`value` with every tensor (in any nesting of lists, tuples, dicts and model outputs) replaced by
    `tensor(it)`, in new containers of the same classes (a processor's BatchFeature, a model's ModelOutput)."""
    import torch

    if isinstance(value, torch.Tensor):
        return tensor(value)
    if isinstance(value, Mapping):
        items = {key: _rebuilt(item, tensor) for key, item in value.items()}
        return type(value)(**items) if isinstance(value, dict) else type(value)(items)
    if isinstance(value, list | tuple):
        return type(value)(_rebuilt(item, tensor) for item in value)
    return value


def _containers_copied(value: Any) -> Any:
    """The same tensors in new lists, tuples, dicts and model outputs."""
    return _rebuilt(value, lambda tensor: tensor)


def repeated(value: Any) -> Any:
    """Tensors (in any nesting of lists, tuples, dicts and model outputs) repeated twice along dimension 0."""
    import torch

    return _rebuilt(value, lambda tensor: torch.cat([tensor, tensor]) if tensor.dim() else tensor)


class OnceProcessor:
    """The processor, with TRL's doubled image batches processed once (see the module's docstring)."""

    def __init__(self, processor: Any):
        self._processor = processor

    def __getattr__(self, name: str) -> Any:
        # Only for what this class lacks. Unpickled or deep-copied (DataLoader workers started with spawn), the copy
        # is asked for `__setstate__` and the like before `_processor` is set: read through `__dict__`, an attribute
        # lookup here would ask for `_processor` again, forever.
        try:
            processor = self.__dict__["_processor"]
        except KeyError:
            raise AttributeError(name) from None
        return getattr(processor, name)

    def __call__(self, *args: Any, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        if not args and isinstance(images, list) and isinstance(text, list) and _halves_repeat(images) \
                and _halves_repeat(text):
            half = len(text) // 2
            return repeated(self._processor(images=images[:half], text=text[:half], **kwargs))
        return self._processor(*args, images=images, text=text, **kwargs)


def encode_images_once(trainer: Any, family: Any, sharded: bool = False) -> None:
    """Both halves on a TRL DPOTrainer: its collator's processor, and its model's vision tower when frozen.

    `sharded` (FSDP): the tower is encoded on every call, its halves still once. There each forward of the tower
    gathers its layers' weights from every rank, so every rank must run it as often as the others; a rank whose
    batch happened to repeat its last one would skip it alone and leave the others waiting."""
    trainer.data_collator.processor = OnceProcessor(trainer.data_collator.processor)
    why_not = share_image_features(trainer.model, family, reuse_last=not sharded)
    if why_not:
        log.info("images encoded by TRL's own path (four times a step): %s", why_not)


def vision_tower(model: Any, family: Any) -> tuple[str, Any] | None:
    """The family's vision tower module in `model` (PEFT-wrapped or not): its name and the module."""
    if not family.vision_modules:
        return None
    suffix = family.vision_modules[0]
    found = [(name, module) for name, module in model.named_modules() if name == suffix or name.endswith(
        f".{suffix}")]
    return min(found, key=lambda item: len(item[0])) if found else None


def share_image_features(model: Any, family: Any, reuse_last: bool = True) -> str | None:
    """Wrap the vision tower's forward (see the module's docstring; `reuse_last`: a call with the last call's inputs
    returns its features). Returns why not, or None when done."""
    found = vision_tower(model, family)
    if found is None:
        return "no vision tower"
    name, tower = found
    trainable = [n for n, p in tower.named_parameters() if p.requires_grad]
    if trainable:
        return f"{name} has trainable weights ({trainable[0]}, ...): its features differ between policy and reference"
    tower.forward = _once_forward(tower.forward, reuse_last)
    log.info("images encoded once a %s: %s shared by chosen, rejected%s (DPO_ENCODE_IMAGES_ONCE)",
             "step" if reuse_last else "pass", name, " and the reference" if reuse_last else "")
    return None


def _once_forward(forward: Callable[..., Any], reuse_last: bool = True) -> Callable[..., Any]:
    import torch

    last: dict[str, Any] = {}

    def same_as_last(args: tuple, kwargs: dict) -> bool:
        if "args" not in last or len(args) != len(last["args"]) or kwargs.keys() != last["kwargs"].keys():
            return False
        pairs = [*zip(args, last["args"], strict=True), *((kwargs[k], last["kwargs"][k]) for k in kwargs)]
        return all(_same(a, b) for a, b in pairs)

    def once(*args: Any, **kwargs: Any) -> Any:
        if reuse_last and same_as_last(args, kwargs):
            return _containers_copied(last["output"])
        last.clear()  # the last step's features go before this step's are made
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim()]
        # No weight of the tower trains: no gradient needs its activations (an input-grad hook for checkpointing
        # would otherwise make its output require one).
        with torch.no_grad():
            if tensors and all(_halves_equal(t) for t in tensors):
                halves = {key: _first_half(value) for key, value in kwargs.items()}
                output = repeated(forward(*(_first_half(arg) for arg in args), **halves))
            else:
                output = forward(*args, **kwargs)
        last.update(args=args, kwargs=kwargs, output=output)
        return _containers_copied(output)  # callers edit the output they get (Qwen's splits pooler_output)

    return once


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
            a.dtype == b.dtype and a.device == b.device and (a is b or torch.equal(a, b))
    return a == b


def _halves_equal(tensor: Any) -> bool:
    import torch

    n = tensor.shape[0] // 2
    return bool(n) and tensor.shape[0] == 2 * n and torch.equal(tensor[:n], tensor[n:])


def _first_half(value: Any) -> Any:
    import torch

    return value[: value.shape[0] // 2] if isinstance(value, torch.Tensor) and value.dim() else value

