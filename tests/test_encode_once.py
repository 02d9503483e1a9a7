"""Each image processed and encoded once a step: the same batch, loss and gradients as TRL's own path, with one
vision-tower forward a step on half the images instead of two on all of them."""

from __future__ import annotations

import pytest

from conftest import job_env

FAMILIES = ["llava-next", "idefics2", "qwen2.5-vl", "qwen3-vl", "gemma3"]


def _trainer(monkeypatch, cache_dir, tmp_path, family, **settings):
    from entrypoint.config.settings import load_settings
    from entrypoint.data.stage import prepare_pairs
    from entrypoint.models.loading import load_model, load_processor, resolve_model
    from entrypoint.training.trainer import build_trainer, dpo_config

    env = job_env(cache_dir, tmp_path, model=f"tiny:{family}", dataset="sample:rlaif-v", lora_dropout="0",
                  quantization="none", **settings)
    for key, value in env.items():
        if key.startswith("DPO_"):
            monkeypatch.setenv(key, value)
    config = load_settings()
    ref = resolve_model(config.model, "auto", None, cache_dir)
    processor = load_processor(ref)
    args = dpo_config(config, tmp_path / "checkpoints", "once")
    data = prepare_pairs(config, cache_dir, processor, ref.family, args.max_length, max_samples=8)
    trainer = build_trainer(config, load_model(ref, "none", processor=processor), ref.family, processor,
                            data.train, None, args)
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
def test_encoding_once_gives_the_same_batch_loss_and_gradients(monkeypatch, cache_dir, tmp_path, family):
    import torch

    from entrypoint.models.encode_once import encode_images_once

    plain, fam, pairs = _trainer(monkeypatch, cache_dir, tmp_path / "plain", family, encode_images_once="false")
    plain_calls = _count_tower_calls(plain, fam)
    plain_batch, plain_loss, plain_grads = _loss_and_grads(plain, pairs)

    once, _, _ = _trainer(monkeypatch, cache_dir, tmp_path / "once", family, encode_images_once="false")
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


def test_a_trained_tower_is_not_shared(monkeypatch, cache_dir, tmp_path):
    """DPO_LORA_VISION: the tower has LoRA weights, so policy and reference features differ: TRL's own path."""
    from entrypoint.models.encode_once import share_image_features

    trainer, family, _ = _trainer(monkeypatch, cache_dir, tmp_path, "llava-next", lora_vision="true",
                                  encode_images_once="false")
    assert "trainable weights" in share_image_features(trainer.model, family)
