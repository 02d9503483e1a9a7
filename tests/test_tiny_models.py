"""Tiny models: built offline, loadable in full precision and in 4 bits, runnable, and cached."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from entrypoint.models import tiny
from entrypoint.models.families import FAMILIES
from entrypoint.models.loading import processor_class
from entrypoint.models.tiny import BUILD_MARKER, IMAGE_PLACEHOLDER, IMAGE_TOKEN, TINY_FAMILIES, build_tiny

PROMPT = "What is in the picture?"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """conftest sets HF_HUB_OFFLINE, but huggingface_hub reads it once, at import."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def built(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    return family, build_tiny(family, tmp_path_factory.mktemp("tiny") / family)


def _processor(family: str, path: Path):
    return processor_class(FAMILIES[family]).from_pretrained(path)


def _inputs(family: str, processor) -> dict[str, torch.Tensor]:
    """One chat-templated prompt, with one odd-sized image for the vision families."""
    if not FAMILIES[family].vision:
        text = processor.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                             add_generation_prompt=True)
        return processor(text, return_tensors="pt", add_special_tokens=False)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    return processor(images=[image], text=text, return_tensors="pt")


def _load_model(family: str, path: Path, **kwargs):
    return getattr(transformers, FAMILIES[family].model_class).from_pretrained(path, **kwargs)


def test_build_is_complete_and_small(built):
    family, path = built
    marker = json.loads((path / BUILD_MARKER).read_text())
    assert (marker["family"], marker["seed"], marker["builder_version"]) == (family, 0, tiny.BUILDER_VERSION)
    expected = {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"}
    assert expected <= {p.name for p in path.iterdir()}
    assert sum(p.stat().st_size for p in path.iterdir()) < 2_000_000


def test_loads_offline_runs_and_generates(built):
    family, path = built
    processor = _processor(family, path)
    model = _load_model(family, path).eval()
    tokenizer = getattr(processor, "tokenizer", processor)
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings  # no token added at load time
    inputs = _inputs(family, processor)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_loads_in_4bit_with_vision_and_head_in_full_precision(built):
    import bitsandbytes as bnb

    family, path = built
    keep = FAMILIES[family].keep_full_precision
    quantization = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=keep)
    model = _load_model(family, path, quantization_config=quantization, device_map={"": "cpu"}, dtype=torch.float32)
    linears = {name: type(module) for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    kept = {name for name in linears if name.startswith(tuple(keep))}
    assert all(linears[name] is torch.nn.Linear for name in kept)
    assert kept and all(linears[name] is bnb.nn.Linear4bit for name in linears.keys() - kept)
    with torch.no_grad():
        logits = model(**_inputs(family, _processor(family, path))).logits
    assert torch.isfinite(logits).all()


def test_generation_prompt_is_a_token_prefix_of_the_answered_prompt(built):
    """DPO splits prompt from completion where the two renderings stop agreeing."""
    family, path = built
    processor = _processor(family, path)
    tokenizer = getattr(processor, "tokenizer", processor)
    assert processor.chat_template == tokenizer.chat_template
    prompt = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    answered = [*prompt, {"role": "assistant", "content": "A dog."}]
    prompt_text = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    answered_text = processor.apply_chat_template(answered, tokenize=False)
    image = IMAGE_PLACEHOLDER.get(family, IMAGE_TOKEN)  # Qwen's and Gemma 3's image markers, as their processors expect
    assert prompt_text == f"<s>System:\nBe brief.\nUser:\n{image}{PROMPT}\nAssistant:\n"
    assert answered_text == f"{prompt_text}A dog.</s>"
    prompt_ids, answered_ids = (tokenizer(text, add_special_tokens=False)["input_ids"]
                                for text in (prompt_text, answered_text))
    assert answered_ids[:len(prompt_ids)] == prompt_ids


def test_second_build_is_cached_and_another_seed_rebuilds(tmp_path):
    path = build_tiny("causal-lm", tmp_path / "m")
    first = (path / "model.safetensors").read_bytes()
    stamp = (path / BUILD_MARKER).stat().st_mtime_ns
    assert build_tiny("causal-lm", path) == path and (path / BUILD_MARKER).stat().st_mtime_ns == stamp
    build_tiny("causal-lm", path, seed=1)
    assert json.loads((path / BUILD_MARKER).read_text())["seed"] == 1
    assert (path / "model.safetensors").read_bytes() != first


def test_same_seed_gives_the_same_files(tmp_path):
    a, b = (build_tiny("causal-lm", tmp_path / name, seed=3) for name in ("a", "b"))
    assert {p.name: p.read_bytes() for p in a.iterdir()} == {p.name: p.read_bytes() for p in b.iterdir()}


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    calls = []
    builder = tiny._MODEL_BUILDERS["causal-lm"]
    monkeypatch.setitem(tiny._MODEL_BUILDERS, "causal-lm", lambda out, seed: calls.append(out) or builder(out, seed))
    threads = [threading.Thread(target=build_tiny, args=("causal-lm", tmp_path / "m")) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and (tmp_path / "m" / BUILD_MARKER).is_file()


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(out: Path, seed: int) -> None:
        out.mkdir()
        (out / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    monkeypatch.setitem(tiny._MODEL_BUILDERS, "causal-lm", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        build_tiny("causal-lm", tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == [".m.lock"]


def test_refuses_a_directory_with_other_files(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="directory of its own"):
        build_tiny("causal-lm", tmp_path / "m")
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["notes.txt"]


def test_unknown_family_is_refused(tmp_path):
    with pytest.raises(ValueError, match="llava-next"):
        build_tiny("gpt-5", tmp_path / "m")


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_a_tiny_model_goes_the_way_of_a_local_model_directory(cache_dir, family):
    """Built into a directory, then its family read from its config.json, as for any local model; and
    DPO_MODEL_FAMILY overrides it the same way."""
    from entrypoint.models.families import FAMILIES
    from entrypoint.models.loading import resolve_model

    ref = resolve_model(f"tiny:{family}", "auto", None, cache_dir)
    assert ref.family is FAMILIES[family] and ref.config_file == Path(ref.source) / "config.json"
    assert resolve_model(ref.source, "auto", None, cache_dir).family is ref.family  # the directory itself
    other = "causal-lm" if family != "causal-lm" else "llava"
    assert resolve_model(f"tiny:{family}", other, "v1", cache_dir).family is FAMILIES[other]
    assert resolve_model(f"tiny:{family}", other, "v1", cache_dir).revision == "v1"
