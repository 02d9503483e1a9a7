"""Models built offline, cached on disk: the machinery shared by `tiny:` and `shapes:` models.

A build writes into a sibling work directory, its marker (the build's identity) last, and is renamed
into place whole: an interrupted build leaves nothing behind, and every DDP rank may ask for the same
model at once (one builds under a lock while the others wait, then find the marker).
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"

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



def build_cached(out_dir: Path, marker_name: str, marker: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """`build(directory)` into `out_dir` unless a finished build with the same `marker` is there already.

    The marker is written last, as the file `marker_name`: its presence means the build is complete.
    """
    out_dir = Path(out_dir)
    if read_marker(out_dir, marker_name) == marker:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out_dir.parent / f".{out_dir.name}.lock"):
        if read_marker(out_dir, marker_name) != marker:
            _build(build, marker_name, marker, out_dir)
    return out_dir


def read_marker(out_dir: Path, marker_name: str) -> dict[str, Any] | None:
    """The marker of a finished build, or None (no build, or one cut short)."""
    try:
        return json.loads((out_dir / marker_name).read_text())
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


def _build(build: Callable[[Path], None], marker_name: str, marker: dict[str, Any], out_dir: Path) -> None:
    """Build in a sibling work directory, marker last, then swap the result in for `out_dir`."""
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    new = work / "new"
    try:
        build(new)
        (new / marker_name).write_text(json.dumps(marker, indent=2) + "\n")
        _replace(out_dir, new, marker_name, old=work / "old")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _replace(out_dir: Path, new: Path, marker_name: str, old: Path) -> None:
    """Put `new` at `out_dir`, replacing an empty directory or an earlier build, nothing else."""
    if read_marker(out_dir, marker_name) is not None:
        out_dir.rename(old)
    try:
        new.rename(out_dir)  # atomic; refuses a non-empty directory
    except OSError:
        raise FileExistsError(f"{out_dir} holds other files; a built model needs a directory of its own") from None


def bpe_tokenizer(chat_template: str, special: dict[str, str] | None = None, vocab_size: int = 1000,
                  whole: tuple[str, ...] = (), **named_tokens: str) -> Any:
    """A byte-level BPE trained on CORPUS, with the special tokens the family's processor expects.

    `special` names bos/eos/unk/pad (default: <s>, </s>, <unk>, <pad>; a vocabulary without bos or
    unk, like Qwen's, leaves them out); `named_tokens` are the family's own (image_token=..., ...).
    Every special token is in the trained vocabulary, so processors that add their tokens at load
    time (Idefics2) find them there and never grow the vocabulary past the embeddings. `whole`: runs
    of characters that are one token each, wherever they stand (whitespace the processor writes
    around images, which byte-level BPE would split differently before a word).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = special or {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}
    specials = list(dict.fromkeys([*special.values(), *named_tokens.values()]))
    bpe = Tokenizer(models.BPE(unk_token=special.get("unk_token")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bpe.add_tokens([AddedToken(run, normalized=False) for run in whole])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, **special, extra_special_tokens=named_tokens,
                                   chat_template=chat_template)


def save_model(model_class: Callable[[Any], Any], config: Any, out_dir: Path, seed: int) -> None:
    """`model_class(config)` (a class or a builder), initialised from `seed` without disturbing the caller's
    random state, and saved."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    model.save_pretrained(out_dir)
