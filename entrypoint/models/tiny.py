"""Tiny, randomly initialised models of each supported family, built offline.

Real checkpoints are gigabytes and live on the Hub; tests and smoke runs need neither. These
models are built from the installed libraries alone in a few seconds, weigh about a
megabyte each, and have the real families' classes, module names, processors and chat-template
shape, so the training code runs on them unchanged (4-bit loading and LoRA included).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

TINY_FAMILIES: tuple[str, ...] = ("llava-next", "llava", "idefics2", "causal-lm")

BUILDER_VERSION = 1  # bump when the built files change, so cached builds are rebuilt
MARKER = "tiny.json"  # written last: its presence means the build is complete

# Every linear layer of the language model is at least this wide: bitsandbytes' CPU 4-bit
# path fails for in_features < 64. The vision side stays narrower on purpose, since it is
# never quantized: a wrong `llm_int8_skip_modules` then fails loudly instead of passing.
TEXT_WIDTH = 64
VISION_WIDTH = 32
IMAGE_SIZE = 32
PATCH_SIZE = 8

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
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

# Plain English in the register of image-preference data, so that the BPE merges are real
# sub-words and tokenized prompts have realistic lengths.
CORPUS = """\
The picture shows a small brown dog sitting on a green lawn in front of a white house.
A woman in a red coat is walking across the street while the traffic light is green.
Two children are playing with a blue ball on the beach; the sea is calm and the sky is clear.
There is a wooden table with three cups of coffee, a plate of cookies and an open book.
The image contains a chart with four bars; the tallest bar is orange and the shortest is grey.
Describe the image in detail. What color is the car? How many people can you see?
Answer the question about the picture. Is there a cat on the sofa? Yes, there is a black cat.
The photograph was taken at night: the city lights reflect on the river under the bridge.
A man is riding a bicycle along a mountain road surrounded by tall pine trees and snow.
The kitchen has a large window, a stove, a sink full of dishes and a bowl of fresh fruit.
I cannot see any text in this image. The sign says "Open" in large yellow letters.
The assistant should answer helpfully, honestly and briefly, and say when it is not sure.
On the left there is a tree; on the right there is a bench where an old man reads a newspaper.
The train station is crowded with travellers carrying suitcases, bags and umbrellas.
A plate of pasta with tomato sauce, basil leaves and cheese sits next to a glass of water.
The diagram explains how water evaporates from the ocean, forms clouds and falls as rain.
Three horses are standing in a field near a fence; one of them is white and two are brown.
The screenshot shows a web page with a search box, a menu and a list of recent articles.
A cyclist waits at the crossing while a delivery van unloads boxes outside the bakery.
The museum room displays ancient pottery, bronze statues and a painting of a ship in a storm.
Please look carefully at the photo and count the birds sitting on the electric wire.
The response is correct because it mentions every object that is visible in the scene.
The response is wrong: there is no umbrella in the image, and the person is wearing glasses.
A laptop, a notebook, a pencil and a pair of headphones lie on the desk next to a lamp.
Children wearing uniforms line up in the school yard before the morning bell rings.
The weather looks cold and cloudy; people are wearing scarves, gloves and warm jackets.
What is written on the label of the bottle? The label reads "Organic Apple Juice".
A farmer drives a tractor through a golden wheat field while birds fly overhead.
The graph shows that temperature increased steadily between January and August.
Which animal is the largest in this picture? The elephant is clearly the largest animal.
A group of friends is having a picnic under an oak tree beside a quiet lake.
The living room has a grey sofa, a patterned rug, a television and several plants.
"""


def build_tiny(family: str, out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny `family` model into `out_dir` (or reuse a finished build there) and return it.

    Every DDP rank may call this at once: one builds while the others wait on a lock, then find
    the marker. The build is renamed into place whole, so an interrupted one leaves nothing behind.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}; choose from {', '.join(TINY_FAMILIES)}")
    out_dir = Path(out_dir)
    marker = {"family": family, "seed": seed, "builder_version": BUILDER_VERSION,
              "transformers": version("transformers")}  # saved formats change between releases
    if _read_marker(out_dir) == marker:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out_dir.parent / f".{out_dir.name}.lock"):
        if _read_marker(out_dir) != marker:
            _build(family, seed, marker, out_dir)
    return out_dir


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    """The marker of a finished build, or None (no build, or one cut short)."""
    try:
        return json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes, released even if the holder dies."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(family: str, seed: int, marker: dict[str, Any], out_dir: Path) -> None:
    """Build in a sibling work directory, marker last, then swap the result in for `out_dir`."""
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    new = work / "new"
    try:
        _BUILDERS[family](new, seed)
        (new / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _replace(out_dir, new, old=work / "old")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _replace(out_dir: Path, new: Path, old: Path) -> None:
    """Put `new` at `out_dir`, replacing an empty directory or an earlier tiny build, nothing else."""
    if _read_marker(out_dir) is not None:
        out_dir.rename(old)
    try:
        new.rename(out_dir)  # atomic; refuses a non-empty directory
    except OSError:
        raise FileExistsError(f"{out_dir} holds other files; a tiny model needs a directory of its own") from None


def _tokenizer(**named_tokens: str) -> Any:
    """A byte-level BPE trained on CORPUS, with the special tokens the family's processor expects.

    Every special token is in the trained vocabulary, so processors that add their tokens at
    load time (Idefics2) find them there and never grow the vocabulary past the embeddings.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [BOS, EOS, UNK, PAD, *named_tokens.values()]
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        extra_special_tokens=named_tokens, chat_template=CHAT_TEMPLATE)


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


def _save_model(model_class: Any, config: Any, out_dir: Path, seed: int) -> None:
    """Initialise from `seed` without disturbing the caller's random state, and save."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    model.save_pretrained(out_dir)


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
    _save_model(LlavaNextForConditionalGeneration, config, out_dir, seed)


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
    _save_model(LlavaForConditionalGeneration, config, out_dir, seed)


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
    _save_model(Idefics2ForConditionalGeneration, config, out_dir, seed)


def _build_causal_lm(out_dir: Path, seed: int) -> None:
    from transformers import MistralForCausalLM

    tokenizer = _tokenizer()
    tokenizer.save_pretrained(out_dir)
    _save_model(MistralForCausalLM, _text_config(tokenizer), out_dir, seed)


_BUILDERS: dict[str, Callable[[Path, int], None]] = {
    "llava-next": _build_llava_next,
    "llava": _build_llava,
    "idefics2": _build_idefics2,
    "causal-lm": _build_causal_lm,
}
