"""Tiny, randomly initialised models of each supported family, built offline.

Real checkpoints are gigabytes and live on the Hub; tests and smoke runs need neither. These
models are built from the installed libraries alone in a few seconds, weigh about a
megabyte each, and have the real families' classes, module names, processors and chat-template
shape, so the training code runs on them unchanged (4-bit loading and LoRA included).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from entrypoint.models.offline import bpe_tokenizer, build_cached, save_model

TINY_FAMILIES: tuple[str, ...] = ("llava-next", "llava", "idefics2", "causal-lm")

BUILDER_VERSION = 1  # bump when the built files change, so cached builds are rebuilt
MARKER = "tiny.json"  # written last: its presence means the build is complete (see offline.py)

# Every linear layer of the language model is at least this wide: bitsandbytes' CPU 4-bit
# path fails for in_features < 64. The vision side stays narrower on purpose, since it is
# never quantized: a wrong `llm_int8_skip_modules` then fails loudly instead of passing.
TEXT_WIDTH = 64
VISION_WIDTH = 32
IMAGE_SIZE = 32
PATCH_SIZE = 8

IMAGE_TOKEN = "<image>"

# Role-prefixed turns, eos after each assistant turn. A prompt rendered with
# add_generation_prompt=True is a prefix of the same prompt followed by an assistant turn, and
# it ends in a newline, which byte-level BPE never merges with the next word: DPO needs both
# to split prompt from completion at the same token.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}:{{ '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{{ '\\n' }}{% endif %}"
)


def build_tiny(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny `family` model into `out_dir` (or reuse a finished build there) and return it."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose from {', '.join(TINY_FAMILIES)}")
    marker = {"family": family, "seed": seed, "builder_version": BUILDER_VERSION,
              "transformers": version("transformers")}  # saved formats change between releases
    return build_cached(out_dir, MARKER, marker, lambda new: _BUILDERS[family](new, seed))


def _tokenizer(**named_tokens: str) -> Any:
    return bpe_tokenizer(CHAT_TEMPLATE, **named_tokens)


def _text_config(tokenizer: Any) -> Any:
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        sliding_window=None, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _clip_vision_config() -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH, num_hidden_layers=2,
                            num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                            projection_dim=VISION_WIDTH)


def _llava_processor_settings() -> dict[str, Any]:
    """CLIP puts a CLS token before the patches; the "default" strategy drops it from the image tokens."""
    return {"patch_size": PATCH_SIZE, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
            "chat_template": CHAT_TEMPLATE}


def _build_llava_next(out_dir: Path, seed: int) -> None:
    from transformers import (
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tokenizer = _tokenizer(image_token=IMAGE_TOKEN)
    pinpoints = [[IMAGE_SIZE, IMAGE_SIZE], [IMAGE_SIZE, 2 * IMAGE_SIZE], [2 * IMAGE_SIZE, IMAGE_SIZE],
                 [2 * IMAGE_SIZE, 2 * IMAGE_SIZE]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, **_llava_processor_settings())
    config = LlavaNextConfig(
        vision_config=_clip_vision_config(), text_config=_text_config(tokenizer),
        image_token_index=tokenizer.image_token_id, image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", tie_word_embeddings=False)
    processor.save_pretrained(out_dir)
    save_model(LlavaNextForConditionalGeneration, config, out_dir, seed)


def _build_llava(out_dir: Path, seed: int) -> None:
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = _tokenizer(image_token=IMAGE_TOKEN)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, **_llava_processor_settings())
    config = LlavaConfig(
        vision_config=_clip_vision_config(), text_config=_text_config(tokenizer),
        image_token_index=tokenizer.image_token_id, vision_feature_select_strategy="default",
        tie_word_embeddings=False)
    processor.save_pretrained(out_dir)
    save_model(LlavaForConditionalGeneration, config, out_dir, seed)


def _build_idefics2(out_dir: Path, seed: int) -> None:
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessorPil,
        Idefics2Processor,
    )

    tokenizer = _tokenizer(image_token=IMAGE_TOKEN, image_boundary_token="<fake_token_around_image>",
                           end_of_utterance_token="<end_of_utterance>")
    image_processor = Idefics2ImageProcessorPil(
        do_image_splitting=False, size={"shortest_edge": IMAGE_SIZE // 2, "longest_edge": IMAGE_SIZE})
    latents = 8  # image tokens per image: the perceiver resamples every image to this many
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=latents,
                                  chat_template=CHAT_TEMPLATE)
    text_config = _text_config(tokenizer)
    config = Idefics2Config(
        vision_config={"hidden_size": VISION_WIDTH, "intermediate_size": 2 * VISION_WIDTH, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE},
        perceiver_config={"hidden_size": TEXT_WIDTH, "rms_norm_eps": text_config.rms_norm_eps,
                          "resampler_n_latents": latents, "resampler_depth": 1, "resampler_n_heads": 2,
                          "resampler_head_dim": 16, "num_key_value_heads": 1},
        text_config=text_config, image_token_id=tokenizer.image_token_id, tie_word_embeddings=False)
    processor.save_pretrained(out_dir)
    save_model(Idefics2ForConditionalGeneration, config, out_dir, seed)


def _build_causal_lm(out_dir: Path, seed: int) -> None:
    from transformers import MistralForCausalLM

    tokenizer = _tokenizer()
    tokenizer.save_pretrained(out_dir)
    save_model(MistralForCausalLM, _text_config(tokenizer), out_dir, seed)


_BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "llava-next": _build_llava_next,
    "llava": _build_llava,
    "idefics2": _build_idefics2,
    "causal-lm": _build_causal_lm,
}
