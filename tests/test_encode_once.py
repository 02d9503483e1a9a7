"""Each image processed and encoded once a step: the same batch, loss and gradients as TRL's own path, with one
vision-tower forward a step on half the images instead of two on all of them."""

from __future__ import annotations

import pytest

from conftest import job_trainer

FAMILIES = ["llava-next", "idefics2", "qwen2.5-vl", "qwen3-vl", "gemma3"]


def _trainer(cache_dir, tmp_path, family, **settings):
    trainer, ref, data = job_trainer(cache_dir, tmp_path, 8, model=f"tiny:{family}", dataset="sample:rlaif-v",
                                     lora_dropout="0", quantization="none", **settings)
    return trainer, ref.family, data.train


def _count_tower_calls(trainer, family):
    """Wrap the tower's forward (under any sharing wrapper put there later) to count calls and images."""
    from entrypoint.models.encode_once import vision_tower

    _, tower = vision_tower(trainer.model, family)
    calls, forward = [], tower.forward

    def counted(*args, **kwargs):
        first = next(v for v in (*args, *kwargs.values()) if hasattr(v, "shape"))
        calls.append(first.shape[0])
        return forward(*args, **kwargs)

    tower.forward = counted
    return calls


def _loss_and_grads(trainer, pairs):
    trainer.model.train()
    batch = trainer.data_collator([pairs[i] for i in range(2)])
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(dict(batch)))
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.zero_grad(set_to_none=True)
    return batch, loss.detach(), grads


@pytest.mark.parametrize("family", FAMILIES)
def test_encoding_once_gives_the_same_batch_loss_and_gradients(cache_dir, tmp_path, family):
    import torch

    from entrypoint.models.encode_once import encode_images_once

    plain, fam, pairs = _trainer(cache_dir, tmp_path / "plain", family, encode_images_once="false")
    plain_calls = _count_tower_calls(plain, fam)
    plain_batch, plain_loss, plain_grads = _loss_and_grads(plain, pairs)

    once, _, _ = _trainer(cache_dir, tmp_path / "once", family, encode_images_once="false")
    once.model.load_state_dict(plain.model.state_dict())  # the same LoRA initialisation
    once_calls = _count_tower_calls(once, fam)  # what reaches the tower below the sharing wrapper
    encode_images_once(once, fam)  # as build_trainer does by default
    once_batch, once_loss, once_grads = _loss_and_grads(once, pairs)

    assert once_batch.keys() == plain_batch.keys()
    for key in plain_batch:  # processed once and repeated: the same tensors
        assert torch.equal(once_batch[key], plain_batch[key]), key
    assert torch.allclose(once_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert once_grads.keys() == plain_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        assert torch.allclose(once_grads[name], grad, rtol=1e-4, atol=1e-6), name
    images = plain_calls[0]
    assert plain_calls == [images, images]  # the policy's pass and the reference's, every image twice in each
    assert once_calls == [images // 2]  # one pass, each image once


def test_a_trained_tower_is_not_shared(cache_dir, tmp_path):
    """DPO_LORA_VISION: the tower has LoRA weights, so policy and reference features differ: TRL's own path."""
    from entrypoint.models.encode_once import share_image_features

    trainer, family, _ = _trainer(cache_dir, tmp_path, "llava-next", lora_vision="true",
                                  encode_images_once="false")
    assert "trainable weights" in share_image_features(trainer.model, family)


@pytest.mark.parametrize("copy_of", ["pickle", "deepcopy"])
def test_the_once_processor_survives_pickling_and_deep_copies(cache_dir, tmp_path, copy_of):
    """DataLoader workers started with spawn unpickle the collator, its processor with it; a deep copy takes the same
    path. The copy is asked for `__setstate__` before it has a processor: that lookup used to recurse until
    RecursionError. The copy processes a doubled batch like the original, tensor for tensor."""
    import copy
    import pickle

    import torch

    from entrypoint.models.encode_once import OnceProcessor

    trainer, _, pairs = _trainer(cache_dir, tmp_path, "llava-next")
    once = trainer.data_collator.processor
    assert isinstance(once, OnceProcessor)
    copied = pickle.loads(pickle.dumps(once)) if copy_of == "pickle" else copy.deepcopy(once)
    assert isinstance(copied, OnceProcessor) and copied.tokenizer.pad_token == once.tokenizer.pad_token
    images = [pairs[i]["images"][0] for i in range(2)] * 2
    text = [copied.apply_chat_template(pairs[i]["prompt"], tokenize=False) for i in range(2)] * 2
    mine = copied(images=images, text=text, return_tensors="pt", padding=True)
    theirs = once(images=images, text=text, return_tensors="pt", padding=True)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
