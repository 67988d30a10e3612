"""Timing helpers of bench/common.py: who runs when, and how many runs are timed (not how fast)."""

import pytest

from zreward_deploy.bench.common import time_blocks, time_interleaved


def recorder(calls: list[str], name: str):
    return lambda: calls.append(name)


def test_time_blocks_takes_turns_by_block_with_warmup_then_one_rewarm_per_block():
    calls: list[str] = []
    times = time_blocks(
        {"a": recorder(calls, "a"), "b": recorder(calls, "b")}, warmup=2, repeats=7, block=3, settle_s=0
    )
    assert {k: len(v) for k, v in times.items()} == {"a": 7, "b": 7}
    assert all(t >= 0 for v in times.values() for t in v)
    # round 1: a (2 warm-up + 3), b (2 + 3); round 2, reversed: b (1 + 3), a (1 + 3); round 3: a (1 + 1), b (1 + 1)
    expected = "a" * 5 + "b" * 5 + "b" * 4 + "a" * 4 + "a" * 2 + "b" * 2
    assert "".join(calls) == expected


def test_time_blocks_with_one_provider_and_a_block_larger_than_repeats():
    calls: list[str] = []
    times = time_blocks({"a": recorder(calls, "a")}, warmup=0, repeats=2, block=10, settle_s=0)
    assert len(times["a"]) == 2 and calls == ["a", "a"]


def test_time_interleaved_alternates_run_by_run():
    calls: list[str] = []
    time_interleaved({"a": recorder(calls, "a"), "b": recorder(calls, "b")}, warmup=1, repeats=2)
    assert "".join(calls) == "ab" + "abab"


@pytest.mark.parametrize("kwargs", [{"block": 0}, {"repeats": 0}, {"warmup": -1}, {"settle_s": -0.1}])
def test_time_blocks_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="block >= 1"):
        time_blocks({"a": lambda: None}, **{"warmup": 0, "repeats": 1, "settle_s": 0, **kwargs})
