"""A built-in task with long worked answers: a word rewritten step by step, for the fast-decoding benchmark.

Input: a word of `length` random lowercase letters, `"qwerty"`. Output: `copies` words, each the word before
it with every letter moved `shift` places on in the alphabet (z wraps to a), space-separated:
`"rxfsuz sygtva ..."` for shift 1. Every letter follows from the letter one word back, a fixed distance
away, so a small model learns the task in minutes, while a decoder that commits a letter before the one it
depends on is known can get it wrong; one wrong letter fails the whole answer. With the defaults (8
letters, 8 copies) the answer is 71 tokens in a 256-token canvas, long enough to measure parallel decoding.
Training and evaluation draw words from different seeds out of 26^8: a repeat is vanishingly unlikely, so
evaluation words are unseen.
"""

from __future__ import annotations

import random
import string

LETTERS = string.ascii_lowercase


def _moved(word: str, shift: int) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + shift) % 26] for c in word)


def shift_answer(word: str, copies: int = 8, shift: int = 1) -> str:
    """The `copies` words after `word`, each moved `shift` letters on from the one before.

    Example:
        >>> shift_answer("abz", copies=3)
        'bca cdb dec'
    """
    if not word or any(c not in LETTERS for c in word):
        raise ValueError(f"word {word!r} must be lowercase letters a-z")
    return " ".join(_moved(word, shift * k) for k in range(1, copies + 1))


def shift_records(num: int, seed: int = 0, length: int = 8, copies: int = 8, shift: int = 1) -> list[dict[str, str]]:
    """`num` problems `{"input": "qwertyui", "output": "rxfsuzvj ..."}` drawn with `seed`."""
    if length < 1 or copies < 1:
        raise ValueError(f"length={length} and copies={copies} must be >= 1")
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        word = "".join(rng.choice(LETTERS) for _ in range(length))
        out.append({"input": word, "output": shift_answer(word, copies, shift)})
    return out


def check_shift(word: str, answer: str, copies: int = 8, shift: int = 1) -> bool:
    """True when `answer` is the complete answer for `word`, every letter right.

    Example:
        >>> check_shift("ab", "bc cd", copies=2), check_shift("ab", "bc ce", copies=2), check_shift("A", "B", 1)
        (True, False, False)
    """
    try:
        return answer.strip() == shift_answer(word, copies, shift)
    except ValueError:
        return False
