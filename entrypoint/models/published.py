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
from pathlib import Path
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

# The Qwen2-VL line's special tokens (tokenizer_config.json's added_tokens_decoder, the same in 2.5-VL and 3-VL).
_QWEN_ADDED = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
               "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655, "<|video_pad|>": 151656}


def _chat_template(name: str) -> str:
    """A checkpoint's chat template, kept byte for byte in chat_templates/ (too long to read well inline)."""
    return (Path(__file__).parent / "chat_templates" / f"{name}.jinja").read_text()


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
    "qwen2.5-vl": Published(
        repo="Qwen/Qwen2.5-VL-7B-Instruct",
        # config.json of Qwen/Qwen2.5-VL-7B-Instruct, as vendored by NVIDIA TensorRT-LLM
        # (tests/unittest/_torch/modeling/test_modeling_qwen2_5vl.py, QWEN2_5_VL_7B_CONFIG) with the full model's
        # layer counts the test notes (28 decoder layers, a 32-block vision tower) and the tower's full-attention
        # blocks [7, 15, 23, 31] (the same tower's config.json in Qwen2.5-VL-3B-Instruct, sophgo/LLM-TPU
        # models/Qwen2_5_VL/config). The test's _name_or_path is left out.
        config={
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "vision_start_token_id": 151652,
            "vision_end_token_id": 151653,
            "vision_token_id": 151654,
            "image_token_id": 151655,
            "video_token_id": 151656,
            "hidden_act": "silu",
            "hidden_size": 3584,
            "initializer_range": 0.02,
            "intermediate_size": 18944,
            "max_position_embeddings": 128000,
            "max_window_layers": 28,
            "model_type": "qwen2_5_vl",
            "num_attention_heads": 28,
            "num_hidden_layers": 28,
            "num_key_value_heads": 4,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.41.2",
            "use_cache": True,
            "use_sliding_window": False,
            "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
                              "num_heads": 16, "in_chans": 3, "out_hidden_size": 3584, "patch_size": 14,
                              "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                              "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                              "temporal_patch_size": 2},
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vocab_size": 152064,
        },
        # preprocessor_config.json (the same 9 keys in Qwen2.5-VL-3B-Instruct's copy, sophgo/LLM-TPU
        # models/Qwen2_5_VL/config, and in printed 7B processors): min/max_pixels are pixel COUNTS; 12845056 =
        # 16,384 tokens of 28 x 28 pixels.
        image_processor={
            "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": _CLIP_MEAN, "image_std": _CLIP_STD,
            "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
        },
        processor=None,  # no processor_config.json: the processor is named in preprocessor_config.json
        # chat_template.json at revision cc594898137f460bfe9f0759e9844b3ce807cfb5 (the official template quoted in
        # a renderer validation of that revision; the 3B's chat_template.json in sophgo/LLM-TPU is byte-identical).
        chat_template=_chat_template("qwen2.5-vl"),
        # tokenizer_config.json: no bos and no unk token, eos <|im_end|>, pad <|endoftext|>; the vision tokens are
        # additional special tokens (named here as the processor reads them).
        special_tokens={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "image_token": "<|image_pad|>",
                        "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
                        "vision_end_token": "<|vision_end|>", "vision_pad_token": "<|vision_pad|>",
                        "im_start_token": "<|im_start|>"},
        added_tokens=_QWEN_ADDED,
        params_billion=8.29,  # "Model size 8.29B params" on the model page (the tower and the 152k vocab count)
        sources=("NVIDIA/TensorRT-LLM tests/unittest/_torch/modeling/test_modeling_qwen2_5vl.py",
                 "sophgo/LLM-TPU models/Qwen2_5_VL/config (Qwen2.5-VL-3B-Instruct: processor, template, tokenizer)"),
    ),
    "qwen3-vl": Published(
        repo="Qwen/Qwen3-VL-8B-Instruct",
        # config.json of Qwen/Qwen3-VL-8B-Instruct, as vendored by NVIDIA TensorRT-LLM
        # (tests/unittest/_torch/modeling/test_modeling_qwen3vl.py, QWEN3_VL_8B_CONFIG) with the full model's 36
        # decoder layers (the test cuts them to 4 and notes 36); its _attn_implementation and _name_or_path are left
        # out.
        config={
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "image_token_id": 151655,
            "model_type": "qwen3_vl",
            "text_config": {
                "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16",
                "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
                "initializer_range": 0.02, "intermediate_size": 12288, "max_position_embeddings": 262144,
                "model_type": "qwen3_vl_text", "num_attention_heads": 32, "num_hidden_layers": 36,
                "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
                "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
                "rope_theta": 5000000, "tie_word_embeddings": False, "use_cache": True, "vocab_size": 151936,
            },
            "tie_word_embeddings": False,
            "transformers_version": "4.57.0.dev0",
            "video_token_id": 151656,
            "vision_config": {
                "deepstack_visual_indexes": [8, 16, 24], "depth": 27, "hidden_act": "gelu_pytorch_tanh",
                "hidden_size": 1152, "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 4304,
                "model_type": "qwen3_vl", "num_heads": 16, "num_position_embeddings": 2304, "out_hidden_size": 4096,
                "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            },
            "vision_end_token_id": 151653,
            "vision_start_token_id": 151652,
        },
        # preprocessor_config.json of the Qwen3-VL line (Qwen3-VL-4B-Instruct's in sophgo/LLM-TPU
        # models/Qwen3_VL/config; the same 8 keys in the 8B's, trimmed copy in a processor test): size holds pixel
        # COUNTS, 16777216 = 16,384 tokens of 32 x 32 pixels, 65536 = 64 tokens.
        image_processor={
            "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "processor_class": "Qwen3VLProcessor", "image_processor_type": "Qwen2VLImageProcessorFast",
        },
        processor=None,
        # chat_template.json: the Qwen3-VL Instruct template, 5,292 bytes, sha256 3636d0f0...a489e4, the value
        # pinned for Qwen/Qwen3-VL-8B-Instruct-GGUF's template in zhongkaifu/TensorSharp's tests; the 4B's
        # chat_template.json in sophgo/LLM-TPU is byte-identical.
        chat_template=_chat_template("qwen3-vl"),
        special_tokens={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "image_token": "<|image_pad|>",
                        "video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
                        "vision_end_token": "<|vision_end|>", "vision_pad_token": "<|vision_pad|>",
                        "im_start_token": "<|im_start|>"},
        added_tokens=_QWEN_ADDED,
        params_billion=8.77,  # "Model size 8.77B params" on the model page
        sources=("NVIDIA/TensorRT-LLM tests/unittest/_torch/modeling/test_modeling_qwen3vl.py",
                 "sophgo/LLM-TPU models/Qwen3_VL/config (Qwen3-VL-4B-Instruct: processor, template, tokenizer)",
                 "zhongkaifu/TensorSharp QwenImageIntentScorerTests (Qwen3-VL-8B-Instruct template sha256)"),
    ),
    "gemma3": Published(
        repo="google/gemma-3-4b-it",
        # config.json of google/gemma-3-4b-it, verbatim (sophgo/LLM-TPU models/Gemma3/config, a copy of the
        # checkpoint's files, README "base_model: google/gemma-3-4b-pt"); the text model's heads (8, 4 key/value,
        # head_dim 256) and vocabulary (262,208) are Gemma3TextConfig's defaults.
        config={
            "architectures": ["Gemma3ForConditionalGeneration"],
            "boi_token_index": 255999,
            "eoi_token_index": 256000,
            "eos_token_id": [1, 106],
            "image_token_index": 262144,
            "initializer_range": 0.02,
            "mm_tokens_per_image": 256,
            "model_type": "gemma3",
            "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                            "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                            "sliding_window": 1024},
            "torch_dtype": "bfloat16",
            "transformers_version": "4.50.0.dev0",
            "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                              "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                              "patch_size": 14, "vision_use_head": False},
        },
        # preprocessor_config.json (same source; identical copies in three training scripts that restore it after
        # saving): pan-and-scan is null here, and Gemma3Processor's own default turns it off.
        image_processor={
            "do_convert_rgb": None, "do_normalize": True, "do_pan_and_scan": None, "do_rescale": True,
            "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "Gemma3ImageProcessor",
            "image_seq_length": 256, "image_std": [0.5, 0.5, 0.5], "pan_and_scan_max_num_crops": None,
            "pan_and_scan_min_crop_size": None, "pan_and_scan_min_ratio_to_activate": None,
            "processor_class": "Gemma3Processor", "resample": 2, "rescale_factor": 0.00392156862745098,
            "size": {"height": 896, "width": 896},
        },
        processor={"image_seq_length": 256, "processor_class": "Gemma3Processor"},  # processor_config.json
        chat_template=_chat_template("gemma3"),  # chat_template.json (same source), 1,532 bytes
        # special_tokens_map.json and tokenizer_config.json: bos <bos>=2, eos <eos>=1, unk <unk>=3, pad <pad>=0,
        # boi/eoi/image tokens; <start_of_turn>=105 and <end_of_turn>=106 are special tokens of the vocabulary.
        special_tokens={"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "pad_token": "<pad>",
                        "image_token": "<image_soft_token>", "boi_token": "<start_of_image>",
                        "eoi_token": "<end_of_image>", "start_of_turn_token": "<start_of_turn>",
                        "end_of_turn_token": "<end_of_turn>"},
        added_tokens={"<image_soft_token>": 262144},  # added_tokens.json
        params_billion=4.30,  # "Model size 4.3B params" on the model page
        sources=("sophgo/LLM-TPU models/Gemma3/config (google/gemma-3-4b-it's config, processor, template, tokens)",),
    ),
}


def full_config(family: str) -> Any:
    """The published model configuration as a transformers config object (full size; nothing downloaded)."""
    from transformers import AutoConfig

    values = {k: v for k, v in PUBLISHED[family].config.items() if k != "architectures"}
    return AutoConfig.for_model(**values)
