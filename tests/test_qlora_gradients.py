"""QLoRA gradients on the CPU: LoRA trained through bitsandbytes 4-bit layers gets the gradients it would get on the
dequantized weights, unless an eval-mode forward has repacked the layers first.

On the CPU, bitsandbytes warns that `gemv_4bit` has no autograd kernel ("silently incorrect behavior"). These tests
show which path training takes. A tiny 2-layer Mistral (hidden 64, MLP 128, the shape of the tiny causal LM) is
loaded with the job's 4-bit config (nf4, double quantization, fp32 compute), prepared as the job prepares it, and
given PEFT LoRA on every decoder linear layer (peft.tuners.lora.bnb.Linear4bit). The reference is the same model
with plain fp32 nn.Linear layers holding the dequantized 4-bit weights, and the same LoRA weights.

- A model fresh from loading, in train mode, runs bitsandbytes' MatMul4Bit: dequantize, then F.linear forward, and a
  matmul with the dequantized weight backward. Its LoRA gradients equal the reference's, for many tokens and for one.
- On a CPU with AVX512-BF16, a forward in eval mode without grad (Trainer.evaluate, generate) repacks every 4-bit
  weight for the bf16 `gemv_4bit` kernel, and the layer keeps that format. Training forwards after it go through
  `gemv_4bit`, which computes in bf16 and returns no gradient for its input: the warned path. The job's
  `load_model` sets `support_avx512bf16_for_cpu = False` on the layers, which prevents the repacking.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from entrypoint.models.loading import keep_4bit_layers_differentiable

bnb = pytest.importorskip("bitsandbytes")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

# Both sides apply the same F.linear to the same fp32 weights, so the gradients agree bit for bit here.
# rtol=1e-5 allows only a different summation order in another BLAS. The bf16 gemv path alone is off by ~4e-3
# relative, and a dropped gradient is off by ~50%.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-7}
QUANTIZED = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
             "bnb_4bit_compute_dtype": torch.float32}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = transformers.MistralConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                        max_position_embeddings=64)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mistral")
    transformers.MistralForCausalLM(config).save_pretrained(path)
    return path


def _models(checkpoint, repack: bool = True):
    """The QLoRA model and its dequantized fp32 twin, with the same random non-zero LoRA weights."""
    qlora = transformers.MistralForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32, device_map={"": "cpu"},
        quantization_config=transformers.BitsAndBytesConfig(**QUANTIZED))
    layers = {name: m for name, m in qlora.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(layers) == 14 and all(m.weight.quant_state.nested for m in layers.values())
    if not repack:
        keep_4bit_layers_differentiable(qlora)  # what the job's load_model does
    reference = transformers.MistralForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    dequantized = {f"{name}.weight": bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state)
                   for name, m in layers.items()}
    assert not reference.load_state_dict(dequantized, strict=False).unexpected_keys
    qlora = peft.prepare_model_for_kbit_training(qlora, use_gradient_checkpointing=True,
                                                 gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    qlora, reference = peft.get_peft_model(qlora, lora), peft.get_peft_model(reference, copy.deepcopy(lora))
    wrapped = [m for m in qlora.modules() if isinstance(m, peft.tuners.lora.bnb.Linear4bit)]
    assert len(wrapped) == 14
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for (name, mine), (their_name, theirs) in zip(qlora.named_parameters(), reference.named_parameters(),
                                                       strict=True):
            assert name == their_name
            if "lora_" in name:  # lora_B is zero at init: random values let gradients flow through A and B
                mine.copy_(torch.randn(mine.shape, generator=generator) * 0.1)
                theirs.copy_(mine)
    return qlora, reference


def _lora_gradients(model, input_ids):
    """A training step's forward and backward (train mode, grad on), with a next-token loss on every position (the
    next token of the last is the first, so one token has a loss too); the logits and the LoRA gradients by name."""
    model.train()
    model.zero_grad()
    logits = model(input_ids=input_ids).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), input_ids.roll(-1, dims=1).flatten()).backward()
    return logits.detach(), {name: p.grad for name, p in model.named_parameters() if "lora_" in name}


def _assert_same_gradients(qlora, reference, input_ids, vanishing: tuple[str, ...] = ()):
    """Every LoRA gradient equals the reference's and is non-zero, but those of the `vanishing` projections, which
    the math makes zero: their size is then rounding noise of the others' (how much depends on the CPU's kernels)."""
    logits, grads = _lora_gradients(qlora, input_ids)
    ref_logits, ref_grads = _lora_gradients(reference, input_ids)
    torch.testing.assert_close(logits, ref_logits, **TOLERANCE)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 2 * 7  # A and B of 7 projections in 2 layers
    scale = max(grad.abs().max() for grad in grads.values())
    for name, grad in grads.items():
        assert grad is not None, name
        if any(f".{projection}." in name for projection in vanishing):
            assert grad.abs().max() <= 1e-5 * scale, name
            assert ref_grads[name].abs().max() <= 1e-5 * scale, name
        else:
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(grad, ref_grads[name], **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}")


def _repacked(model) -> bool:
    return any(getattr(m.weight.quant_state, "packing_format_for_cpu", False)
               for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))


def test_lora_gradients_through_4bit_layers_equal_dequantized_reference(checkpoint):
    """Batch 2 x 12 tokens, the shape of training. Every LoRA gradient matches. The q/k/v LoRA gradients reach the
    loss only through o_proj's 4-bit weight, gate/up's only through down_proj's, and layer 0's through all of
    layer 1's: a 4-bit layer that passed no gradient to its input would fail here (see the repacking test)."""
    qlora, reference = _models(checkpoint)
    input_ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _assert_same_gradients(qlora, reference, input_ids)
    assert not [w for w in caught if "gemv_4bit" in str(w.message)]
    assert not _repacked(qlora)


def test_single_token_gradients_are_exact_too(checkpoint):
    """bitsandbytes 0.50 does not pick a kernel by token count: one token with grad runs MatMul4Bit like many, so
    its gradients match as well. Training never sees one token anyway (a DPO row is prompt + completion, >= 2
    tokens), and generation, the one-token case, runs under no_grad.

    With one token, attention's softmax has one entry: its output is 1 whatever the query and key, so the q_proj
    and k_proj LoRA gradients are zero (exactly, or within rounding noise: an AVX512-FP16 Xeon gives exact zeros,
    other CPUs ~1e-9); every other projection's still flows."""
    qlora, reference = _models(checkpoint)
    _assert_same_gradients(qlora, reference, torch.tensor([[5]]), vanishing=("q_proj", "k_proj"))
    assert not _repacked(qlora)


def _eval_forward(model, input_ids):
    """What Trainer.evaluate does (and job.py calls it before trainer.train): eval mode, no grad."""
    model.eval()
    with torch.no_grad():
        model(input_ids=input_ids)


@pytest.mark.skipif(not bnb.functional.has_avx512bf16(), reason="repacking for gemv_4bit needs AVX512-BF16")
def test_eval_forward_repacks_4bit_layers_and_later_gradients_are_wrong(checkpoint):
    """The warned path: after one eval-mode forward without grad, training runs `gemv_4bit`, and its backward
    drops the gradient through the base weight. If this test fails, bitsandbytes changed this behaviour: check
    whether the workaround in the next test is still needed."""
    qlora, reference = _models(checkpoint)
    input_ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    _eval_forward(qlora, input_ids)
    assert _repacked(qlora)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, grads = _lora_gradients(qlora, input_ids)
    assert any("gemv_4bit" in str(w.message) and "autograd kernel was not registered" in str(w.message)
               for w in caught)
    _, ref_grads = _lora_gradients(reference, input_ids)
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"  # reaches the loss via o_proj
    assert (grads[name] - ref_grads[name]).norm() > 0.1 * ref_grads[name].norm()


def test_eval_forward_keeps_exact_gradients_without_repacking(checkpoint):
    """The job's fix (models/loading.py, `keep_4bit_layers_differentiable`): with `support_avx512bf16_for_cpu`
    off on every 4-bit layer, evaluation does not repack, and training afterwards still gets the exact gradients."""
    qlora, reference = _models(checkpoint, repack=False)
    input_ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    _eval_forward(qlora, input_ids)
    assert not _repacked(qlora)
    _assert_same_gradients(qlora, reference, input_ids)
