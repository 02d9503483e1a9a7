"""`shapes:<family>`: the published checkpoint's geometry, cut narrow enough to train on a CPU.

Everything that decides how many tokens an image becomes and what the modules are called is the
published checkpoint's own (published.py): the preprocessor and processor configuration verbatim
(image size, patch size, grid pinpoints, image_seq_len, image splitting, min/max pixels,
normalisation), the vision feature layer and select strategy, newline/unpadding, the chat
template, the special tokens and the module tree. Only widths and depths are cut (hidden sizes, layer and head counts,
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
BUILD_MARKER = "shapes.json"

# What is cut. Language-model linear layers stay >= 64 wide: bitsandbytes' CPU 4-bit path fails below.
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
QWEN_VISION = {"hidden_size": 32, "intermediate_size": 64, "depth": 2, "num_heads": 2}  # Qwen-VL's own key names
PERCEIVER = {"resampler_depth": 1, "resampler_n_heads": 2, "resampler_head_dim": 16, "num_key_value_heads": 1}
# Config keys holding a special token's id, and the token (Published.special_tokens) whose id they take.
TOKEN_IDS = {"image_token_index": "image_token", "image_token_id": "image_token", "video_token_id": "video_token",
             "vision_start_token_id": "vision_start_token", "vision_end_token_id": "vision_end_token",
             "vision_token_id": "vision_pad_token", "boi_token_index": "boi_token", "eoi_token_index": "eoi_token"}
# Text the processor writes around every image that the real vocabulary holds as one token: Gemma 3 puts "\n\n"
# before and after each image's tokens. It is one token of the BPE too, so an image costs what it costs for real.
WHOLE = {"gemma3": ("\n\n",)}


def build_shapes(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build the `shapes:` model of `family` into `out_dir` (or reuse a finished build there) and return it."""
    if family not in SHAPES_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(SHAPES_FAMILIES)}")
    marker = {"family": family, "seed": seed, "builder_version": BUILDER_VERSION,
              "published": PUBLISHED[family].repo, "transformers": version("transformers")}
    return build_cached(out_dir, BUILD_MARKER, marker, lambda new: _build(family, new, seed))


def tokenizer(family: str) -> Any:
    """The BPE tokenizer with the checkpoint's special tokens and chat template."""
    published = PUBLISHED[family]
    base = {k: v for k, v in published.special_tokens.items() if k in ("bos_token", "eos_token", "unk_token",
                                                                       "pad_token")}
    named = {k: v for k, v in published.special_tokens.items() if k not in base}
    return bpe_tokenizer(published.chat_template, base, whole=WHOLE.get(family, ()), **named)


def narrow_config(family: str, tok: Any) -> Any:
    """The published model config with widths and depths cut and token ids those of `tok`."""
    from transformers import AutoConfig

    values = copy.deepcopy({k: v for k, v in PUBLISHED[family].config.items()
                            if k not in ("architectures", "torch_dtype", "dtype")})  # built in fp32, as the others
    text = values.get("text_config", values)
    text.pop("dtype", None)
    mrope = (text.get("rope_scaling") or {}).get("mrope_section")
    old_head_dim = (text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]) if mrope else 0
    text.update(TEXT, vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                tie_word_embeddings=False)
    if mrope:  # Qwen's rotary sections of the head (time, height, width) shrink with a head narrowed by the cut
        head_dim = text.get("head_dim") or TEXT["hidden_size"] // TEXT["num_attention_heads"]
        text["rope_scaling"]["mrope_section"] = [part * head_dim // old_head_dim for part in mrope]
    if "pad_token_id" in text:
        text["pad_token_id"] = tok.pad_token_id
    if "vision_config" in values:
        vision = values["vision_config"]
        if "depth" in vision:  # Qwen-VL: its blocks named by index (full attention, DeepStack) become the last one
            vision.update(QWEN_VISION, out_hidden_size=TEXT["hidden_size"])
            for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):
                if key in vision:
                    vision[key] = [QWEN_VISION["depth"] - 1]
        else:
            values["vision_config"] = {**vision, **VISION}
    if "perceiver_config" in values:  # the latent count is image_seq_len: it stays
        values["perceiver_config"] = {**values["perceiver_config"], **PERCEIVER, "hidden_size": TEXT["hidden_size"]}
    for key, token in TOKEN_IDS.items():
        if key in values:
            values[key] = tok.convert_tokens_to_ids(PUBLISHED[family].special_tokens[token])
    if "pad_token_id" in values:
        values["pad_token_id"] = tok.pad_token_id
    if "eos_token_id" in values and values is not text:  # Gemma 3 names its end-of-turn token too
        values["eos_token_id"] = tok.eos_token_id
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
        if published.processor is not None:
            _write_json(out_dir / "processor_config.json", published.processor)
        (out_dir / "chat_template.jinja").write_text(published.chat_template)
    save_model(lambda config: build_model(config, FAMILIES[family]), narrow_config(family, tok), out_dir, seed)


def _write_json(path: Path, values: dict[str, Any]) -> None:
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
