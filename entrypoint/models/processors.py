"""Qwen's processors without their video processor.

transformers' Qwen2.5-VL and Qwen3-VL processors load a video processor beside the image processor and
the tokenizer, and the video processor needs torchvision, which neither the image nor the test
environment installs: `AutoProcessor.from_pretrained` fails on every Qwen-VL checkpoint there. The job
never sends videos, so these classes are the same processors with the video attribute left out: they
load, tokenize, expand `<|image_pad|>` and save exactly like transformers' own (the saved files name
transformers' class, so a user with torchvision loads them with AutoProcessor as usual).

Module-level classes, not built on the fly: the data pipeline's workers unpickle them by name.
"""

from __future__ import annotations

from typing import Any

import transformers


class Qwen2_5_VLProcessor(transformers.Qwen2_5_VLProcessor):  # transformers' name: it is saved in the files
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


class Qwen3VLProcessor(transformers.Qwen3VLProcessor):
    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
