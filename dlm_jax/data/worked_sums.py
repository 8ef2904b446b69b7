"""A built-in task with long worked answers: a lagged-Fibonacci sequence mod 10, written out one step per term.

Input: four seed digits `"3729"`. Output: `steps` terms, each written `a+b=c` with `c = (a + b) mod 10`, where
`a` is the previous term and `b` the term four back: `"9+3=2,2+7=9,9+2=1,1+9=0,..."`. Every step depends on the
steps before it, so a decoder that commits a step before its operands are known gets it wrong; with the
default 12 steps the answer is 71 characters, long enough to measure parallel decoding in a 256-token canvas.
Seeds divisible by 11 (91 of the 10^4) are held out of the training split: `split="eval"` draws only those.
"""

from __future__ import annotations

import random

LAG = 4
_HELD_OUT = 11  # a seed s (0..9999) with s % 11 == 0 is held out for evaluation


def lagged_sum_answer(seed: str, steps: int = 12) -> str:
    """The worked answer for four seed digits.

    Example:
        >>> lagged_sum_answer("3729", steps=3)
        '9+3=2,2+7=9,9+2=1'
    """
    terms = [int(d) for d in seed]
    out = []
    for _ in range(steps):
        a, b = terms[-1], terms[-LAG]
        terms.append((a + b) % 10)
        out.append(f"{a}+{b}={terms[-1]}")
    return ",".join(out)


def lagged_sum_records(num: int, seed: int = 0, steps: int = 12, split: str = "train") -> list[dict[str, str]]:
    """`num` problems `{"input": "3729", "output": "9+3=2,..."}`; `split` "train" never draws an "eval" seed."""
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if split not in ("train", "eval"):
        raise ValueError(f"split={split!r} is not one of ('train', 'eval')")
    pool = [s for s in range(10**LAG) if (s % _HELD_OUT == 0) == (split == "eval")]
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        problem = f"{rng.choice(pool):0{LAG}d}"
        out.append({"input": problem, "output": lagged_sum_answer(problem, steps)})
    return out


def check_lagged_sum(problem: str, answer: str, steps: int = 12) -> bool:
    """True when `answer` is the complete worked sequence of `steps` steps for `problem`, every step right.

    Example:
        >>> check_lagged_sum("3729", "9+3=2,2+7=9", steps=2), check_lagged_sum("3729", "9+3=2,2+7=8", steps=2)
        (True, False)
    """
    return len(problem) == LAG and problem.isdigit() and answer.strip() == lagged_sum_answer(problem, steps)
