"""The worked lagged-sum task (fast-decoding benchmark): generator and checker against an independent reference."""

from dlm_jax.data.worked_sums import check_lagged_sum, lagged_sum_records


def _reference(seed: str, steps: int) -> list[int]:
    """Terms 5.. of x[n] = (x[n-1] + x[n-4]) mod 10, by an explicit index loop."""
    x = [int(c) for c in seed]
    for n in range(4, 4 + steps):
        x.append((x[n - 1] + x[n - 4]) % 10)
    return x


def test_lagged_sum_records_and_checker():
    train = lagged_sum_records(300, seed=3)
    held_out = lagged_sum_records(50, seed=3, split="eval")
    assert train == lagged_sum_records(300, seed=3) and train != lagged_sum_records(300, seed=4)
    assert all(int(r["input"]) % 11 for r in train) and all(int(r["input"]) % 11 == 0 for r in held_out)
    for r in train + held_out:
        x = _reference(r["input"], 12)
        steps = r["output"].split(",")
        assert len(r["input"]) == 4 and len(r["output"]) == 71  # 12 steps "a+b=c": a 64+-token answer
        assert steps == [f"{x[n - 1]}+{x[n - 4]}={x[n]}" for n in range(4, 16)]
        assert check_lagged_sum(r["input"], r["output"])
    problem, answer = train[0]["input"], train[0]["output"]
    wrong_last = answer[:-1] + str((int(answer[-1]) + 1) % 10)
    for bad in (wrong_last, answer.rsplit(",", 1)[0], answer + ",0+0=0", "", answer.replace(",", ";")):
        assert not check_lagged_sum(problem, bad)
    assert not check_lagged_sum("372", answer) and check_lagged_sum(problem, answer.split(",")[0], steps=1)
