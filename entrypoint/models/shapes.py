"""`shapes:<family>`: the published checkpoint's geometry, cut narrow enough to train on a CPU.

Everything that decides how many tokens an image becomes and what the modules are called is the
published checkpoint's own (published.py): the preprocessor and processor configuration verbatim
(image size, patch size, grid pinpoints, image_seq_len, image splitting, normalisation), the
vision feature layer and select strategy, newline/unpadding, the chat template, the special
tokens and the module tree. Only widths and depths are cut (hidden sizes, layer and head counts,
the vocabulary), so a few DPO steps on real-size photos take seconds, and a 1024x768 photo costs
the same 2,000-odd image tokens it costs llava-v1.6-mistral-7b.

The tokenizer is a small BPE (offline.py) carrying the checkpoint's special tokens: text token
counts differ from the real SentencePiece vocabulary's, image token counts do not.
"""

from __future__ import annotations

import copy
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from entrypoint.models.offline import bpe_tokenizer, build_cached, save_model
from entrypoint.models.published import PUBLISHED

SHAPES_FAMILIES: tuple[str, ...] = tuple(PUBLISHED)
BUILDER_VERSION = 1  # bump when the built files change, so cached builds are rebuilt
MARKER = "shapes.json"

# What is cut. Language-model linear layers stay >= 64 wide: bitsandbytes' CPU 4-bit path fails below.
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
PERCEIVER = {"resampler_depth": 1, "resampler_n_heads": 2, "resampler_head_dim": 16, "num_key_value_heads": 1}


def build_shapes(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build the `shapes:` model of `family` into `out_dir` (or reuse a finished build there) and return it."""
    if family not in SHAPES_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(SHAPES_FAMILIES)}")
    marker = {"family": family, "seed": seed, "builder_version": BUILDER_VERSION,
              "published": PUBLISHED[family].repo, "transformers": version("transformers")}
    return build_cached(out_dir, MARKER, marker, lambda new: _build(family, new, seed))


def tokenizer(family: str) -> Any:
    """The BPE tokenizer with the checkpoint's special tokens and chat template."""
    published = PUBLISHED[family]
    base = {k: v for k, v in published.special_tokens.items() if k in ("bos_token", "eos_token", "unk_token",
                                                                       "pad_token")}
    named = {k: v for k, v in published.special_tokens.items() if k not in base}
    return bpe_tokenizer(published.chat_template, base, **named)


def narrow_config(family: str, tok: Any) -> Any:
    """The published model config with widths and depths cut and token ids those of `tok`."""
    from transformers import AutoConfig

    values = copy.deepcopy({k: v for k, v in PUBLISHED[family].config.items() if k != "architectures"})
    text = values.get("text_config", values)
    text.update(TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                tie_word_embeddings=False)
    if "pad_token_id" in text:
        text["pad_token_id"] = tok.pad_token_id
    if "vision_config" in values:
        values["vision_config"] = {**values["vision_config"], **VISION}
    if "perceiver_config" in values:  # the latent count is image_seq_len: it stays
        values["perceiver_config"] = {**values["perceiver_config"], **PERCEIVER, "hidden_size": TEXT["hidden_size"]}
    for key in ("image_token_index", "image_token_id"):
        if key in values:
            values[key] = tok.convert_tokens_to_ids(PUBLISHED[family].special_tokens["image_token"])
    if "pad_token_id" in values:
        values["pad_token_id"] = tok.pad_token_id
    if "vocab_size" in values:
        values["vocab_size"] = len(tok)
    return AutoConfig.for_model(**values)


def _build(family: str, out_dir: Path, seed: int) -> None:
    from entrypoint.models.architecture import build_model
    from entrypoint.models.families import FAMILIES

    published = PUBLISHED[family]
    tok = tokenizer(family)
    tok.save_pretrained(out_dir)
    if published.image_processor is not None:  # the checkpoint's own processor files, verbatim
        _write_json(out_dir / "preprocessor_config.json", published.image_processor)
        _write_json(out_dir / "processor_config.json", published.processor)
        (out_dir / "chat_template.jinja").write_text(published.chat_template)
    save_model(lambda config: build_model(config, FAMILIES[family]), narrow_config(family, tok), out_dir, seed)


def _write_json(path: Path, values: dict[str, Any]) -> None:
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
