"""Synthetic tasks shipped with the package: reverse-curse facts, 4x4 sudoku, countdown, arithmetic.

Every generator is deterministic in its seed. Sudoku and countdown use Dream's record format
(`{"input": ..., "output": ...}`) and never emit an input of Dream's published test sets
(their hashes ship in `heldout_hashes.json`), so training data is disjoint from the evaluation data.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import pathlib
import random

_HELDOUT = pathlib.Path(__file__).with_name("heldout_hashes.json")

_SYLLABLES = ("ka", "lo", "mi", "ren", "tos", "vi", "dra", "el", "qua", "zor", "fen", "ul", "bri", "sa", "nov", "ith")
_ROLES = ("keeper", "founder", "painter", "mayor", "healer", "captain", "builder", "singer",
          "warden", "scribe", "baker", "pilot", "judge", "tailor", "smith", "poet")
_PLACES = ("Ostmere", "Vellgard", "Quillon", "Brakewood", "Sunhollow", "Ardent", "Mirefall", "Tolveth",
           "Kessary", "Orrin", "Duskvale", "Emberly", "Pallow", "Wrenfield", "Corvast", "Lunaris")


@functools.lru_cache(maxsize=1)
def heldout_hashes() -> dict[str, frozenset[str]]:
    """Hashes of Dream's test inputs (sudoku, countdown) that generators must never produce."""
    data = json.loads(_HELDOUT.read_text())
    return {k: frozenset(data[k]) for k in ("sudoku", "countdown")}


def input_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Fact:
    """One fictional fact `NAME is DESCRIPTION .` (SMDM's reverse-curse setting)."""

    name: str
    description: str

    @property
    def forward_text(self) -> str:
        return f"{self.name} is {self.description} ."


def _names(rng: random.Random, n: int) -> list[str]:
    words = sorted({a.capitalize() + b for a, b in itertools.product(_SYLLABLES, repeat=2)})
    if 2 * n > len(words):
        raise ValueError(f"num_facts={n} is too large; at most {len(words) // 2} fictional names exist")
    picked = rng.sample(words, 2 * n)
    return [f"{picked[2 * i]} {picked[2 * i + 1]}" for i in range(n)]


def reverse_curse_facts(num_facts: int, seed: int = 0) -> list[Fact]:
    """`num_facts` fictional facts with unique names and unique descriptions.

    Example:
        >>> facts = reverse_curse_facts(2, seed=0)
        >>> facts[0]
        Fact(name='Toska Ulmi', description='the poet of Kessary')
        >>> facts[1].forward_text
        'Draith Novith is the judge of Lunaris .'
    """
    if not 1 <= num_facts <= len(_ROLES) * len(_PLACES):
        raise ValueError(f"num_facts={num_facts} must be in [1, {len(_ROLES) * len(_PLACES)}]")
    rng = random.Random(seed)
    descriptions = [f"the {r} of {p}" for r, p in itertools.product(_ROLES, _PLACES)]
    return [Fact(n, d) for n, d in zip(_names(rng, num_facts), rng.sample(descriptions, num_facts), strict=True)]


# ---- 4x4 sudoku ------------------------------------------------------------------------------

@functools.cache
def _sudoku_solutions() -> tuple[tuple[int, ...], ...]:
    """All 288 solved 4x4 grids, in the order of their rows' permutations (row by row, pruning early)."""
    rows = list(itertools.permutations((1, 2, 3, 4)))

    def fits(grid: tuple[tuple[int, ...], ...], row: tuple[int, ...]) -> bool:
        r = len(grid)
        if any(row[c] == above[c] for above in grid for c in range(4)):
            return False
        if r % 2 == 1:  # the row completes two 2x2 boxes with the one above it
            return all(len({*grid[-1][c:c + 2], *row[c:c + 2]}) == 4 for c in (0, 2))
        return True

    def extend(grid: tuple[tuple[int, ...], ...]):
        if len(grid) == 4:
            yield tuple(v for row in grid for v in row)
            return
        for row in rows:
            if fits(grid, row):
                yield from extend((*grid, row))

    return tuple(extend(()))


def _grid_text(cells: tuple[int, ...] | list[int]) -> str:
    return "\n".join("".join(str(v) for v in cells[r * 4:(r + 1) * 4]) for r in range(4))


def sudoku_records(num: int, seed: int = 0, min_given: int = 4, max_given: int = 12) -> list[dict[str, str]]:
    """4x4 sudoku puzzles in Dream's format (0 = empty), none of them in Dream's test sets."""
    if not 1 <= min_given <= max_given <= 15:
        raise ValueError(f"need 1 <= min_given <= max_given <= 15, got {min_given}, {max_given}")
    rng = random.Random(seed)
    solutions = _sudoku_solutions()
    banned = heldout_hashes()["sudoku"]
    seen: set[str] = set()
    out = []
    while len(out) < num:
        sol = rng.choice(solutions)
        keep = set(rng.sample(range(16), rng.randint(min_given, max_given)))
        puzzle = _grid_text([v if i in keep else 0 for i, v in enumerate(sol)])
        if puzzle in seen or input_hash(puzzle) in banned:
            continue
        seen.add(puzzle)
        out.append({"input": puzzle, "output": _grid_text(sol)})
    return out


# ---- countdown -------------------------------------------------------------------------------

def _apply(a: int, b: int, op: str) -> int | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a > b else None
    if op == "*":
        return a * b
    return a // b if b > 1 and a % b == 0 else None


def countdown_records(num: int, seed: int = 0, num_operands: int = 3, max_value: int = 99) -> list[dict[str, str]]:
    """Countdown in Dream's format: input `a,b,...,target`, output the equation chain; disjoint from Dream's tests."""
    if not 2 <= num_operands <= 5:
        raise ValueError(f"num_operands={num_operands} must be in [2, 5]")
    rng = random.Random(seed)
    banned = heldout_hashes()["countdown"]
    seen: set[str] = set()
    out = []
    while len(out) < num:
        numbers = [rng.randint(1, max_value) for _ in range(num_operands)]
        pool, steps = list(numbers), []
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            a, b = max(pool[i], pool[j]), min(pool[i], pool[j])
            op = rng.choice("+-*/")
            value = _apply(a, b, op)
            if value is None or value <= 0:
                break
            steps.append(f"{a}{op}{b}={value}")
            pool = [v for k, v in enumerate(pool) if k not in (i, j)] + [value]
        if len(pool) != 1 or pool[0] > 10 * max_value:
            continue
        text = ",".join(str(v) for v in numbers + pool)
        if text in seen or input_hash(text) in banned:
            continue
        seen.add(text)
        out.append({"input": text, "output": ",".join(steps)})
    return out


def arithmetic_records(num: int, seed: int = 0, max_value: int = 99, ops: str = "+-") -> list[dict[str, str]]:
    """`{"input": "23+45=", "output": "68"}` problems over non-negative results."""
    rng = random.Random(seed)
    out = []
    for _ in range(num):
        a, b, op = rng.randint(0, max_value), rng.randint(0, max_value), rng.choice(ops)
        if op == "-" and b > a:
            a, b = b, a
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        out.append({"input": f"{a}{op}{b}=", "output": str(value)})
    return out
