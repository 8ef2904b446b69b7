"""The letter-shift task (fast-decoding benchmark): generator and checker against an independent reference."""

import pytest

from dlm_jax.data.letter_shifts import check_shift, shift_answer, shift_records


def _reference(word: str, copies: int, shift: int) -> list[str]:
    """Each copy by character codes: ord arithmetic mod 26 from the original word."""
    return ["".join(chr((ord(c) - 97 + shift * k) % 26 + 97) for c in word) for k in range(1, copies + 1)]


def test_shift_records_and_checker():
    train = shift_records(300, seed=3)
    held_out = shift_records(50, seed=4)
    assert train == shift_records(300, seed=3)
    assert not {r["input"] for r in train} & {r["input"] for r in held_out}
    for r in train + held_out:
        assert len(r["input"]) == 8 and len(r["output"]) == 71  # 8 words of 8: a 64+-token answer
        assert r["output"].split(" ") == _reference(r["input"], 8, 1)
        assert check_shift(r["input"], r["output"])
    assert shift_records(2, seed=1, length=3, copies=2, shift=0)[0]["output"].split() == [
        shift_records(2, seed=1, length=3)[0]["input"]] * 2
    word, answer = train[0]["input"], train[0]["output"]
    wrong_last = answer[:-1] + ("a" if answer[-1] != "a" else "b")
    for bad in (wrong_last, answer.rsplit(" ", 1)[0], answer + " " + answer[-8:], "", answer.replace(" ", ",")):
        assert not check_shift(word, bad)
    assert not check_shift(word.upper(), answer) and check_shift(word, answer.split(" ")[0], copies=1)
    with pytest.raises(ValueError, match="lowercase letters"):
        shift_answer("ab1")
    with pytest.raises(ValueError, match="copies=0"):
        shift_records(1, copies=0)
