"""The published configuration of the checkpoint each family's users start from.

These are facts copied from the checkpoints' own files (config.json, preprocessor_config.json,
processor_config.json, the chat template, the added tokens), with the source of each named beside
it. Nothing here is downloaded at run time: `shapes.py` builds offline models from these values, and
the tests build the full-size architectures from them on the meta device (no weights) to check
parameter counts, module names and the memory plan against the real thing.

Where a file leaves a value to transformers' defaults (e.g. Mistral's hidden size inside
LLaVA-NeXT's text_config), it is left out here too: the same defaults fill it in, as they do when
the real checkpoint loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# CLIP ViT-L/14-336 normalisation, shared by both LLaVA checkpoints' preprocessor_config.json.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# The CLIP ViT-L/14-336 vision tower of both LLaVA checkpoints (config.json, "vision_config").
_CLIP_L_336 = {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
               "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
               "vocab_size": 32000}
# Both LLaVA checkpoints' tokenizers: Llama's bos <s>=1, eos </s>=2, unk <unk>=0, plus <image> and <pad>.
_LLAVA_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                 "image_token": "<image>"}
_LLAVA_ADDED = {"<image>": 32000, "<pad>": 32001}
_LLAVA_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@dataclass(frozen=True)
class Published:
    """One checkpoint's published files, as far as they decide shapes, tokens and module names."""

    repo: str
    config: dict[str, Any]  # config.json
    image_processor: dict[str, Any] | None  # preprocessor_config.json
    processor: dict[str, Any] | None  # processor_config.json (without the chat template)
    chat_template: str
    special_tokens: dict[str, str]  # bos/eos/unk/pad and the family's named tokens (image_token, ...)
    added_tokens: dict[str, int]  # added_tokens.json: token -> id in the real vocabulary
    params_billion: float  # "Model size" on the model page
    sources: tuple[str, ...]


PUBLISHED: dict[str, Published] = {
    "llava-next": Published(
        repo="llava-hf/llava-v1.6-mistral-7b-hf",
        # config.json of llava-hf/llava-v1.6-mistral-7b-hf, as vendored verbatim by NVIDIA TensorRT-LLM
        # (tests/unittest/_torch/modeling/test_modeling_llava_next.py, LLAVA_NEXT_7B_CONFIG; the test cuts the
        # tower to 2 layers and notes 24 for the full model). The text model's hidden size (4096), layers (32)
        # and heads (32) are MistralConfig's defaults.
        config={
            "architectures": ["LlavaNextForConditionalGeneration"],
            "ignore_index": -100,
            "image_grid_pinpoints": _LLAVA_NEXT_PINPOINTS,
            "image_token_index": 32000,
            "model_type": "llava_next",
            "projector_hidden_act": "gelu",
            "text_config": {"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2",
                            "architectures": ["MistralForCausalLM"], "intermediate_size": 14336,
                            "max_position_embeddings": 32768, "model_type": "mistral", "num_key_value_heads": 8,
                            "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
                            "vocab_size": 32064},
            "use_image_newline_parameter": True,
            "vision_config": _CLIP_L_336,
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "vocab_size": 32064,
        },
        # preprocessor_config.json, as printed by the Hub's LlavaNextImageProcessor (MouYongli/DeepHallu,
        # docs/llava_next.md).
        image_processor={
            "aspect_ratio_setting": "anyres", "crop_size": {"height": 336, "width": 336}, "do_center_crop": True,
            "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
            "image_grid_pinpoints": _LLAVA_NEXT_PINPOINTS, "image_mean": _CLIP_MEAN,
            "image_processor_type": "LlavaNextImageProcessor", "image_std": _CLIP_STD,
            "processor_class": "LlavaNextProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
            "size": {"shortest_edge": 336},
        },
        # processor_config.json (same source; the five keys also in derivatives' processor_config.json).
        processor={"image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": 14,
                   "processor_class": "LlavaNextProcessor", "vision_feature_select_strategy": "default"},
        # processor.chat_template as loaded from the Hub (same source).
        chat_template=(
            "{% for message in messages %}{% if message['role'] == 'system' %}"
            "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
            "{% elif message['role'] == 'user' %}{{ '[INST] ' }}{# Render all images first #}"
            "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
            "{% endfor %}{# Render all text next #}"
            "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
            "{% endfor %}{{' [/INST]' }}{% elif message['role'] == 'assistant' %}"
            "{{ ' ' + message['content'][0]['text'] + '</s> '}}"
            "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
        ),
        # The Hub tokenizer as printed (same source): bos <s>=1, eos </s>=2, unk <unk>=0, pad <pad>=32001.
        special_tokens=_LLAVA_TOKENS,
        added_tokens=_LLAVA_ADDED,
        params_billion=7.57,  # "Model size 7.57B params" on the pages of same-architecture derivatives
        sources=("NVIDIA/TensorRT-LLM tests/unittest/_torch/modeling/test_modeling_llava_next.py",
                 "MouYongli/DeepHallu docs/llava_next.md (printed Hub processor and tokenizer)"),
    ),
    "llava": Published(
        repo="llava-hf/llava-1.5-7b-hf",
        # config.json of llava-hf/llava-1.5-7b-hf at 05ae2434 ("Update text config to Vicuna (#15)"); 950 bytes,
        # the size the Hub lists. The text model's dimensions are LlamaConfig's defaults (4096, 32 layers, 11008).
        config={
            "architectures": ["LlavaForConditionalGeneration"],
            "ignore_index": -100,
            "image_token_index": 32000,
            "model_type": "llava",
            "pad_token_id": 32001,
            "projector_hidden_act": "gelu",
            "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                            "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                            "vocab_size": 32064},
            "tie_word_embeddings": False,
            "vision_config": _CLIP_L_336,
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "vocab_size": 32064,
        },
        # preprocessor_config.json (505 bytes, the size the Hub lists; copy in HuggingFaceH4/sft-llava-1.5-7b-hf).
        image_processor={
            "crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "do_convert_rgb": True,
            "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": _CLIP_MEAN,
            "image_processor_type": "CLIPImageProcessor", "image_std": _CLIP_STD, "processor_class": "LlavaProcessor",
            "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336},
        },
        # processor_config.json (173 bytes; copy in JanEbigt/LLaVA-att-test).
        processor={"image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": 14,
                   "processor_class": "LlavaProcessor", "vision_feature_select_strategy": "default"},
        # chat_template.json (copy in FriendliAI/llava-1.5-7b-hf, "Duplicate from llava-hf/llava-1.5-7b-hf").
        chat_template=(
            "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
            "{% endif %}{# Render all images first #}"
            "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
            "{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
            "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
            "{{ content['text'] + ' '}}{% endfor %}{% else %}"
            "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
            "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
        ),
        # added_tokens.json (41 bytes) and generation_config.json: bos 1, eos 2, pad 32001.
        special_tokens=_LLAVA_TOKENS,
        added_tokens=_LLAVA_ADDED,
        params_billion=7.06,  # "Model size 7.06B params" (same-architecture pages)
        sources=("huggingface.co/llava-hf/llava-1.5-7b-hf (file sizes, commit 05ae2434)",
                 "huggingface.co/HuggingFaceH4/sft-llava-1.5-7b-hf preprocessor_config.json",
                 "huggingface.co/FriendliAI/llava-1.5-7b-hf chat_template.json"),
    ),
    "idefics2": Published(
        repo="HuggingFaceM4/idefics2-8b",
        # config.json of HuggingFaceM4/idefics2-8b (684 bytes, the size the Hub lists; copy in
        # Nao142002/Idefics2_doneness). The perceiver is left to Idefics2PerceiverConfig's defaults (64 latents,
        # depth 3, 16 heads of 96, 4 key/value heads: the expanded config of jihadzakki/idefics2-8b-medvqa), the
        # text model to MistralConfig's (4096, 32 layers, sliding window 4096).
        config={
            "architectures": ["Idefics2ForConditionalGeneration"],
            "image_token_id": 32001,
            "model_type": "idefics2",
            "perceiver_config": {"model_type": "idefics2_perceiver"},
            "text_config": {"max_position_embeddings": 32768, "model_type": "mistral", "pad_token_id": 0,
                            "rms_norm_eps": 1e-05, "vocab_size": 32003},
            "tie_word_embeddings": False,
            "use_cache": True,
            "vision_config": {"hidden_size": 1152, "image_size": 980, "intermediate_size": 4304,
                              "model_type": "idefics2_vision", "num_attention_heads": 16, "num_hidden_layers": 27,
                              "patch_size": 14},
        },
        # preprocessor_config.json (460 bytes, the size the Hub lists, which only do_image_splitting=true gives;
        # copy in huz-relay/idefics2-8b-ocr, "Duplicate from HuggingFaceM4/idefics2-8b").
        image_processor={
            "do_convert_rgb": True, "do_image_splitting": True, "do_normalize": True, "do_pad": True,
            "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
            "image_processor_type": "Idefics2ImageProcessor", "image_std": [0.5, 0.5, 0.5],
            "processor_class": "Idefics2Processor", "resample": 2, "rescale_factor": 0.00392156862745098,
            "size": {"longest_edge": 980, "shortest_edge": 378},
        },
        # processor_config.json (HuggingFaceM4/idefics2-8b refs/pr/63, 483 bytes), chat template kept apart.
        processor={"image_seq_len": 64, "processor_class": "Idefics2Processor"},
        chat_template=(
            "{% for message in messages %}{{message['role'].capitalize()}}"
            "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
            "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
            "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
            "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
        ),
        # added_tokens.json (92 bytes); text_config.pad_token_id is 0, i.e. <unk>.
        special_tokens={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                        "image_token": "<image>", "image_boundary_token": "<fake_token_around_image>",
                        "end_of_utterance_token": "<end_of_utterance>"},
        added_tokens={"<fake_token_around_image>": 32000, "<image>": 32001, "<end_of_utterance>": 32002},
        params_billion=8.4,  # "Model size 8.4B params" (full fine-tunes' pages); "8 billion" in the model card
        sources=("huggingface.co/HuggingFaceM4/idefics2-8b (file sizes, processor_config.json)",
                 "huggingface.co/Nao142002/Idefics2_doneness config.json",
                 "huggingface.co/huz-relay/idefics2-8b-ocr preprocessor_config.json"),
    ),
    "causal-lm": Published(
        repo="mistralai/Mistral-7B-Instruct-v0.2",
        # config.json of mistralai/Mistral-7B-Instruct-v0.2 (596 bytes, the size the Hub lists; copies with
        # _name_or_path mistralai/Mistral-7B-Instruct-v0.2 in hiranb/mistralonnx, ECNU-SEA/SEA-E).
        config={
            "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1,
            "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
            "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
            "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False, "use_cache": True,
            "vocab_size": 32000,
        },
        image_processor=None,
        processor=None,
        # tokenizer_config.json's chat_template (copy in PrunaAI/Mistral-7B-Instruct-v0.2-bnb-4bit, 1.46 kB like
        # the v0.2 duplicates). No pad token: the job pads with eos.
        chat_template=(
            "{{ bos_token }}{% for message in messages %}"
            "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
            "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
            "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
            "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
            "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
        ),
        special_tokens={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        added_tokens={},
        params_billion=7.24,  # "Model size 7.24B params" (same-architecture pages)
        sources=("huggingface.co/hiranb/mistralonnx config.json",
                 "huggingface.co/PrunaAI/Mistral-7B-Instruct-v0.2-bnb-4bit tokenizer_config.json"),
    ),
}


def full_config(family: str) -> Any:
    """The published model configuration as a transformers config object (full size; nothing downloaded)."""
    from transformers import AutoConfig

    values = {k: v for k, v in PUBLISHED[family].config.items() if k != "architectures"}
    return AutoConfig.for_model(**values)
