"""Preference pairs from scored samples, as RLAIF-V builds them (its repository's script/ pairing and
`get_pairs_filter_shorten.py`).

Per prompt: the distinct samples by score, best first; pairs are (higher, lower) with the best against the worst,
the second best against the second worst, ..., at most `per_prompt` of them; equal scores never pair (a tie says
nothing about which is better). Then over the whole round, RLAIF-V's length balance: a judge that counts wrong
claims favours answers with fewer claims, so chosen answers drift shorter; pairs whose chosen answer is shorter than
the rejected one by more than a share `r` of it are dropped, with `r` searched over 0, 0.02, ..., 0.98 for the
smallest gap between the mean chosen and mean rejected length (in words), and identical answers are dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

RATIOS = [step / 50 for step in range(50)]  # 0, 0.02, ..., 0.98, RLAIF-V's search


@dataclass(frozen=True)
class Pair:
    prompt: int  # the prompt's index in the round
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float


@dataclass
class Pairing:
    pairs: list[Pair]
    unpaired: Counter = field(default_factory=Counter)  # prompts without a pair, by reason
    length_ratio: float | None = None  # the filter's share, None when no pair was left to filter


def prompt_pairs(index: int, samples: Sequence[str], scores: Sequence[float], per_prompt: int) -> list[Pair]:
    """This prompt's pairs: best against worst, then inwards, equal scores never paired."""
    best: dict[str, float] = {}
    for sample, score in zip(samples, scores, strict=True):
        text = sample.strip()
        if text and (text not in best or score > best[text]):
            best[text] = score
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))  # ties in a stable order: by text
    pairs = []
    for k in range(min(per_prompt, len(ranked) // 2)):
        (chosen, high), (rejected, low) = ranked[k], ranked[-1 - k]
        if high <= low:
            break
        pairs.append(Pair(index, chosen, rejected, high, low))
    return pairs


def _words(text: str) -> int:
    return len(text.split())


def shorter_than(pairs: list[Pair], ratio: float) -> list[Pair]:
    """RLAIF-V's filter_pair_by_len: drop a pair whose chosen answer is shorter than the rejected by more than
    `ratio` of the rejected answer's length, and a pair of identical answers."""
    return [pair for pair in pairs if (_words(pair.rejected) - _words(pair.chosen)) / max(_words(pair.rejected), 1)
            <= ratio and pair.chosen.strip() != pair.rejected.strip()]


def length_balanced(pairs: list[Pair]) -> tuple[list[Pair], float | None]:
    """The pairs left at the share that brings mean chosen and mean rejected lengths closest (RLAIF-V's search)."""
    best: tuple[float, float, list[Pair]] | None = None
    for ratio in RATIOS:
        kept = shorter_than(pairs, ratio)
        if not kept:
            continue
        chosen = sum(_words(p.chosen) for p in kept) / len(kept)
        rejected = sum(_words(p.rejected) for p in kept) / len(kept)
        gap = abs(chosen - rejected) / max(rejected, 1e-9)
        if best is None or gap < best[0]:
            best = (gap, ratio, kept)
    return (best[2], best[1]) if best else ([], None)


def make_pairs(samples: Sequence[Sequence[str]], scores: Sequence[Sequence[float]], per_prompt: int) -> Pairing:
    """Every prompt's pairs, length-balanced over the round; prompts left without one counted by reason."""
    pairs, unpaired = [], Counter()
    for index, (group, group_scores) in enumerate(zip(samples, scores, strict=True)):
        found = prompt_pairs(index, group, group_scores, per_prompt)
        if found:
            pairs.extend(found)
        elif len({s.strip() for s in group if s.strip()}) < 2:
            unpaired["fewer than 2 distinct answers"] += 1
        else:
            unpaired["every answer scored the same"] += 1
    kept, ratio = length_balanced(pairs)
    dropped = {pair.prompt for pair in pairs} - {pair.prompt for pair in kept}
    if dropped:
        unpaired["length balance dropped its pairs"] += len(dropped)
    return Pairing(kept, unpaired, ratio)
