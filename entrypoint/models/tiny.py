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

TINY_FAMILIES: tuple[str, ...] = ("llava-next", "llava", "idefics2", "qwen2.5-vl", "qwen3-vl", "gemma3", "causal-lm")

BUILDER_VERSION = 1  # bump when the built files change, so cached builds are rebuilt
BUILD_MARKER = "tiny.json"  # written last: its presence means the build is complete (see offline.py)

# Every linear layer of the language model is at least this wide: bitsandbytes' CPU 4-bit
# path fails for in_features < 64. The vision side stays narrower on purpose, since it is
# never quantized: a wrong `llm_int8_skip_modules` then fails loudly instead of passing.
TEXT_WIDTH = 64
VISION_WIDTH = 32
IMAGE_SIZE = 32
PATCH_SIZE = 8

IMAGE_TOKEN = "<image>"
# What the chat template writes for an image, where the family's processor expects more than IMAGE_TOKEN: Qwen's
# vision start/end around the token its processor expands, Gemma 3's start-of-image token (the processor adds the
# image's tokens and end-of-image after it).
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PLACEHOLDER = {"qwen2.5-vl": QWEN_IMAGE, "qwen3-vl": QWEN_IMAGE, "gemma3": "<start_of_image>"}
QWEN_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
               "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}


def chat_template(image: str = IMAGE_TOKEN) -> str:
    """Role-prefixed turns, eos after each assistant turn, `image` where an image goes. A prompt rendered with
    add_generation_prompt=True is a prefix of the same prompt followed by an assistant turn, and it ends in a
    newline, which byte-level BPE never merges with the next word: DPO needs both to split prompt from completion
    at the same token."""
    return (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ message['role'] | capitalize }}:{{ '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}Assistant:{{ '\\n' }}{% endif %}"
    )


CHAT_TEMPLATE = chat_template()


def build_tiny(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny `family` model into `out_dir` (or reuse a finished build there) and return it."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose from {', '.join(TINY_FAMILIES)}")
    marker = {"family": family, "seed": seed, "builder_version": BUILDER_VERSION,
              "transformers": version("transformers")}  # saved formats change between releases
    return build_cached(out_dir, BUILD_MARKER, marker, lambda new: _MODEL_BUILDERS[family](new, seed))


def _tokenizer(template: str = CHAT_TEMPLATE, **named_tokens: str) -> Any:
    return bpe_tokenizer(template, **named_tokens)


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


def _qwen_processor(family: str, processor_class: str, patch: int) -> Any:
    """Qwen's image processor at tiny sizes: images of at most 64 x 64 pixels, a token per 2 x 2 patches."""
    from transformers import Qwen2VLImageProcessorPil

    from entrypoint.models import processors

    tokenizer = _tokenizer(chat_template(IMAGE_PLACEHOLDER[family]), **QWEN_TOKENS)
    token_side = 2 * patch
    image_processor = Qwen2VLImageProcessorPil(min_pixels=token_side**2, max_pixels=16 * token_side**2,
                                               patch_size=patch, merge_size=2, temporal_patch_size=2)
    return getattr(processors, processor_class)(image_processor=image_processor, tokenizer=tokenizer,
                                                chat_template=tokenizer.chat_template)


def _qwen_text(tokenizer: Any, head_dim: int, mrope_section: list[int], **rope: Any) -> dict[str, Any]:
    return {"vocab_size": len(tokenizer), "hidden_size": TEXT_WIDTH, "intermediate_size": 2 * TEXT_WIDTH,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": head_dim,
            "max_position_embeddings": 2048, "rope_scaling": {"mrope_section": mrope_section, **rope},
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, "tie_word_embeddings": False}


def _qwen_ids(tokenizer: Any) -> dict[str, int]:
    return {"image_token_id": tokenizer.image_token_id, "video_token_id": tokenizer.video_token_id,
            "vision_start_token_id": tokenizer.convert_tokens_to_ids(QWEN_TOKENS["vision_start_token"]),
            "vision_end_token_id": tokenizer.convert_tokens_to_ids(QWEN_TOKENS["vision_end_token"])}


def _build_qwen2_5_vl(out_dir: Path, seed: int) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    processor = _qwen_processor("qwen2.5-vl", "Qwen2_5_VLProcessor", PATCH_SIZE)
    tokenizer = processor.tokenizer
    # mrope: the rotary halves of a 16-wide head split over time, height and width, as 16/24/24 of 128
    config = Qwen2_5_VLConfig(
        text_config=_qwen_text(tokenizer, TEXT_WIDTH // 4, [2, 3, 3], type="mrope"),
        vision_config={"depth": 2, "hidden_size": VISION_WIDTH, "intermediate_size": 2 * VISION_WIDTH,
                       "num_heads": 2, "out_hidden_size": TEXT_WIDTH, "patch_size": PATCH_SIZE,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 4 * PATCH_SIZE,
                       "fullatt_block_indexes": [1]},
        tie_word_embeddings=False, **_qwen_ids(tokenizer))
    processor.save_pretrained(out_dir)
    save_model(Qwen2_5_VLForConditionalGeneration, config, out_dir, seed)


def _build_qwen3_vl(out_dir: Path, seed: int) -> None:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    processor = _qwen_processor("qwen3-vl", "Qwen3VLProcessor", PATCH_SIZE)
    tokenizer = processor.tokenizer
    config = Qwen3VLConfig(
        text_config=_qwen_text(tokenizer, TEXT_WIDTH // 4, [4, 2, 2], mrope_interleaved=True, rope_type="default"),
        vision_config={"depth": 2, "hidden_size": VISION_WIDTH, "intermediate_size": 2 * VISION_WIDTH,
                       "num_heads": 2, "out_hidden_size": TEXT_WIDTH, "patch_size": PATCH_SIZE,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "deepstack_visual_indexes": [1],
                       "num_position_embeddings": 64},  # an 8 x 8 grid, interpolated to each image's
        tie_word_embeddings=False, **_qwen_ids(tokenizer))
    processor.save_pretrained(out_dir)
    save_model(Qwen3VLForConditionalGeneration, config, out_dir, seed)


def _build_gemma3(out_dir: Path, seed: int) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    tokenizer = _tokenizer(chat_template(IMAGE_PLACEHOLDER["gemma3"]), image_token="<image_soft_token>",
                           boi_token="<start_of_image>", eoi_token="<end_of_image>")
    tokens_per_image = 4  # the 4 x 4 patches of a 32-px image, average-pooled 2 x 2 as Gemma 3 pools 64 x 64 to 16 x 16
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                              image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=tokenizer.chat_template, image_seq_length=tokens_per_image)
    config = Gemma3Config(
        text_config={"vocab_size": len(tokenizer), "hidden_size": TEXT_WIDTH, "intermediate_size": 2 * TEXT_WIDTH,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "head_dim": TEXT_WIDTH // 4, "query_pre_attn_scalar": TEXT_WIDTH // 4, "sliding_window": 64,
                     "max_position_embeddings": 2048, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                     "tie_word_embeddings": False},
        vision_config={"model_type": "siglip_vision_model", "hidden_size": VISION_WIDTH,
                       "intermediate_size": 2 * VISION_WIDTH, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE, "vision_use_head": False},
        mm_tokens_per_image=tokens_per_image, image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"), tie_word_embeddings=False)
    processor.save_pretrained(out_dir)
    save_model(Gemma3ForConditionalGeneration, config, out_dir, seed)


def _build_causal_lm(out_dir: Path, seed: int) -> None:
    from transformers import MistralForCausalLM

    tokenizer = _tokenizer()
    tokenizer.save_pretrained(out_dir)
    save_model(MistralForCausalLM, _text_config(tokenizer), out_dir, seed)


_MODEL_BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "llava-next": _build_llava_next,
    "llava": _build_llava,
    "idefics2": _build_idefics2,
    "qwen2.5-vl": _build_qwen2_5_vl,
    "qwen3-vl": _build_qwen3_vl,
    "gemma3": _build_gemma3,
    "causal-lm": _build_causal_lm,
}
