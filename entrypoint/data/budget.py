"""Token budget: find pairs whose prompt cannot fit in DPO_MAX_LENGTH before training starts.

TRL cuts each prompt+completion to `max_length` from the end. A long answer is merely shortened,
but a prompt whose image tokens reach past `max_length` makes the model fail mid-run ("image
features and image tokens do not match"), hours in on real data. So every prompt is measured
while the data is prepared, and the ones that cannot fit are dropped and reported.

An image expands to a number of tokens that depends only on its size, so that number is computed
once per distinct size with the real processor, and text is measured with the tokenizer.
"""

from __future__ import annotations

from typing import Any

from PIL import Image


class PromptLength:
    """Callable: the number of tokens a pair's prompt takes, images expanded, as TRL will see it."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self._image_tokens: dict[tuple[int, int], int] = {}

    def image_tokens(self, size: tuple[int, int]) -> int:
        """Tokens one image of this size adds beyond its single placeholder."""
        if size not in self._image_tokens:
            marker = self.processor.image_token
            expanded = self.processor(text=marker, images=[Image.new("RGB", size)])["input_ids"][0]
            self._image_tokens[size] = len(expanded) - len(self.tokenizer(marker)["input_ids"])
        return self._image_tokens[size]

    def __call__(self, pair: dict[str, Any]) -> int:
        text = self.processor.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=False)
        length = len(self.tokenizer(text)["input_ids"])
        return length + sum(self.image_tokens(image.size) for image in pair.get("images") or [])
