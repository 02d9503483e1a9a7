"""The memory plan's activations against the bytes autograd really saves, for every family's `shapes:` model (the
published processor and module tree at narrow widths, so the 7B's formula is the one held here).

The model goes the job's way, in the dtypes of a bf16 GPU run: loaded in 4-bit as models/loading.py loads it with
the GPU's bf16 compute dtype (two families also unquantized, in bf16), prepared for k-bit training with
non-reentrant checkpointing (training/trainer.py's build_trainer, for a quantized base), TRL's fused LM head, the
job's LoRA, input grads and every trained weight in fp32 (TRL, and keep_trained_weights_in_fp32), images encoded
once; one DPO batch (TRL's collator: a pair's chosen and rejected sequences, one photo) runs forward and backward
under CPU autocast to bf16. Two things a CUDA run does differently are done its way: dropout is the fused kernel
CUDA dispatches to (ATen's is_fused_kernel_acceptable: a bool mask, where the CPU's saves an fp32 noise tensor), and
TRL's fused head scores the completion's positions only, as it does where Triton runs (trl/trainer/utils.py,
`compact = _use_triton(...)`; the tiles are still folded in torch).

Counted once per storage (untyped_storage data_ptr and nbytes: a tensor saved twice, or a view of a saved tensor,
counts once), without the parameters and autocast's bf16 copies of them (the plan counts those apart): with
checkpointing, everything saved plus what the checkpointed layers hold as their inputs, and one layer's saved tensors
measured without checkpointing (what its recomputation saves for its backward); without checkpointing, everything.
"""

from __future__ import annotations

import pytest
import torch

FAMILIES = ["llava-next", "llava", "idefics2", "qwen2.5-vl", "qwen3-vl", "gemma3", "causal-lm"]
TOLERANCE = 0.15
PHOTO = (640, 480)
CHOSEN = "The photo shows a red square on a plain background, and nothing else is in it. " * 2
REJECTED = "A blue circle."


class _FusedDropout(torch.nn.Module):
    """nn.Dropout as CUDA runs it: ATen sends a CUDA tensor to native_dropout, which saves a bool mask."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return torch.native_dropout(x, self.p, self.training)[0]


def _prepared(family_name, quantization, cache_dir, monkeypatch):
    """The model and processor as the job trains them (module docstring)."""
    import trl.trainer.utils
    from peft import get_peft_model, prepare_model_for_kbit_training
    from trl.trainer.utils import add_fused_lm_head

    import entrypoint.models.loading
    from entrypoint.config.settings import load_settings
    from entrypoint.models.encode_once import OnceProcessor, share_image_features
    from entrypoint.models.families import FAMILIES as REGISTRY
    from entrypoint.models.loading import ModelRef, load_model, load_processor
    from entrypoint.models.lora import lora_config, place_modules_to_save
    from entrypoint.models.shapes import build_shapes
    from entrypoint.training.trainer import keep_trained_weights_in_fp32

    family = REGISTRY[family_name]
    ref = ModelRef(str(build_shapes(family_name, cache_dir / "shapes" / family_name)), family)
    processor = load_processor(ref)
    monkeypatch.setattr(entrypoint.models.loading, "compute_dtype", lambda: torch.bfloat16)  # a GPU's
    monkeypatch.setattr(trl.trainer.utils, "_use_triton", lambda device: True)  # the head's GPU path (docstring)
    model = load_model(ref, quantization, processor=processor)
    if quantization != "none":  # as build_trainer: k-bit preparation for a quantized base only
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # DPOTrainer's
    model = get_peft_model(model, place_modules_to_save(model, lora_config(load_settings(), family)))
    model.enable_input_require_grads()  # DPOTrainer, with checkpointing
    keep_trained_weights_in_fp32(model)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Dropout) and child.p > 0:
                setattr(module, name, _FusedDropout(child.p))
    if family.vision:
        share_image_features(model, family)
        processor = OnceProcessor(processor)  # as encode_images_once gives it to the collator
    return model.train(), processor, ref


def _batch(processor, family):
    """One pair through TRL's collator: input_ids, masks and image inputs, and the completion mask."""
    from PIL import Image
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DataCollatorForVisionPreference

    if family.vision:
        example = {"images": [Image.new("RGB", PHOTO, "red")],
                   "prompt": [{"role": "user", "content": "What is in the photo?"}],
                   "chosen": [{"role": "assistant", "content": CHOSEN}],
                   "rejected": [{"role": "assistant", "content": REJECTED}]}
        return dict(DataCollatorForVisionPreference(processor=processor)([example]))
    ids = {key: processor(text, add_special_tokens=False)["input_ids"]
           for key, text in (("prompt_ids", "What is in the photo?"), ("chosen_ids", CHOSEN),
                             ("rejected_ids", REJECTED))}
    return dict(DataCollatorForPreference(pad_token_id=processor.pad_token_id)([ids]))


def _excluded(model) -> set[int]:
    """Storages that are weights, not activations: parameters, buffers, 4-bit quantization states."""
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code, *([state.state2.absmax, state.state2.code] if state.nested else [])]
    return {t.untyped_storage().data_ptr() for t in tensors}


def _from_parameter(tensor) -> bool:
    """An autocast copy (or a view of one) of a trained weight: its graph leads straight to the parameter."""
    node = tensor.grad_fn
    while node is not None and type(node).__name__ in ("ToCopyBackward0", "TBackward0", "ViewBackward0",
                                                       "TransposeBackward0", "PermuteBackward0"):
        node = next((fn for fn, _ in node.next_functions if fn is not None), None)
    return node is not None and type(node).__name__ == "AccumulateGrad"


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def _measure(model, family, batch, checkpointing: bool, backward: bool):
    """One forward (and backward) as DPOTrainer's policy pass: the storages autograd saved (bytes, and the decoder
    layer each was first saved in, None outside), those the decoder layers received, and the tower's output."""
    from entrypoint.models.encode_once import vision_tower

    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    excluded, saved, inputs, tower_output = _excluded(model), {}, {}, {}
    where: list[int | None] = [None]

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded and storage.data_ptr() not in saved and not _from_parameter(tensor):
            saved[storage.data_ptr()] = (storage.nbytes(), where[0])
        return tensor

    def entering(index):
        def hook(module, args, kwargs):
            where[0] = index
            for tensor in _tensors([args, kwargs]):  # checkpointing keeps them (kwargs in its recompute closure)
                inputs[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return hook

    def left(module, args, output):
        where[0] = None

    def cached(module, args, output):  # encode-once keeps this output for the whole step
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _tensors([output.to_tuple()])}
        last = output.last_hidden_state
        tower_output.update(bytes=sum(storages.values()), patches=last.numel() // last.shape[-1])

    layers = list(model.get_decoder().layers)
    hooks = [hook for index, layer in enumerate(layers) for hook in (
        layer.register_forward_pre_hook(entering(index), with_kwargs=True), layer.register_forward_hook(left))]
    if family.vision:
        hooks.append(vision_tower(model, family)[1].register_forward_hook(cached))
    completion = batch["completion_mask"]
    model_inputs = {key: value for key, value in batch.items() if key != "completion_mask"}
    labels = model_inputs["input_ids"].masked_fill(completion == 0, -100)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            output = model(**model_inputs, labels=labels, fused_lm_head=True, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    if backward:
        output.log_probs.sum().backward()
        trained = [p.grad for name, p in model.named_parameters() if "lora_B" in name]
        assert trained and all(grad is not None and grad.abs().sum() > 0 for grad in trained)
        model.zero_grad(set_to_none=True)
    inputs = {key: size for key, size in inputs.items() if key not in excluded}
    return saved, inputs, tower_output


def _plan(ref, quantization, batch, tower_patches: int, checkpointing: bool):
    """The plan's activations for this batch, counted on the shapes model's own config; its tower sees the patches
    this photo makes (the plan's own are the most an image may take)."""
    from dataclasses import replace

    from entrypoint.config.settings import load_settings
    from entrypoint.models.architecture import describe, load_config
    from entrypoint.models.loading import config_path
    from entrypoint.models.lora import lora_config
    from entrypoint.planning.memory import Workload, activations, layout

    config = load_config(config_path(ref))
    arch = describe(config, ref.family, lora_config(load_settings(), ref.family))
    length = batch["input_ids"].shape[1]
    answer = int(batch["completion_mask"].sum(dim=1).max())  # the longer answer's tokens
    work = Workload(batch=1, length=length, answer_tokens=answer, images_per_pair=int(ref.family.vision),
                    tiles_per_image=1, gradient_checkpointing=checkpointing)
    return activations(replace(arch, vision_patches=tower_patches), work, layout(config, ref.family), quantization)


@pytest.mark.parametrize(("family", "quantization"), [*((family, "4bit") for family in FAMILIES),
                                                      ("llava", "none"), ("causal-lm", "none")])
def test_the_plans_activations_are_what_autograd_saves(family, quantization, cache_dir, monkeypatch):
    model, processor, ref = _prepared(family, quantization, cache_dir, monkeypatch)
    batch = _batch(processor, ref.family)
    tokens = batch["input_ids"].numel()
    saved, inputs, tower = _measure(model, ref.family, batch, checkpointing=True, backward=True)
    plain, plain_inputs, _ = _measure(model, ref.family, batch, checkpointing=False, backward=False)
    # A layer's recomputation saves what the layer saves without checkpointing, its inputs aside (held already)
    one_layer = max(sum(size for key, (size, index) in plain.items() if index == layer and key not in plain_inputs)
                    for layer in range(len(model.get_decoder().layers)))
    measured = (sum({**{key: size for key, (size, _) in saved.items()}, **inputs}.values()) + one_layer) / tokens
    measured_plain = sum({**{key: size for key, (size, _) in plain.items()}, **plain_inputs}.values()) / tokens
    patches = tower["patches"] // 2 if ref.family.vision else 0  # the doubled batch's
    planned, planned_plain = (_plan(ref, quantization, batch, patches, on).saved / tokens for on in (True, False))
    print(f"{family} {quantization}: {tokens} tokens; bytes a token with checkpointing {measured:,.0f} measured, "
          f"{planned:,.0f} planned; without {measured_plain:,.0f}, {planned_plain:,.0f}")
    assert planned == pytest.approx(measured, rel=TOLERANCE)
    assert planned_plain == pytest.approx(measured_plain, rel=TOLERANCE)
    if ref.family.vision:  # the tower's output encode-once caches for the step
        kept = _plan(ref, quantization, batch, patches, True).vision_kept
        print(f"  tower output {tower['bytes']:,} bytes measured, {kept:,.0f} planned")
        assert kept == pytest.approx(tower["bytes"], rel=TOLERANCE)
