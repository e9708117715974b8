import json

import pytest

from cram_core.budget import BudgetClock
from cram_core.config import BudgetConfig


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_seconds_budget_stops_at_the_budget():
    fake = FakeClock()
    clock = BudgetClock(BudgetConfig(seconds=10.0), clock=fake)
    fake.advance(50.0)  # before start(): compilation and warm-up are not training time
    clock.start()
    assert clock.seconds == 0.0 and clock.progress == 0.0
    fake.advance(4.0)
    assert clock.progress == pytest.approx(0.4) and not clock.done
    fake.advance(5.999)
    assert not clock.done
    fake.advance(0.001)
    assert clock.done and clock.progress == 1.0
    fake.advance(5.0)
    assert clock.progress == 1.0 and clock.seconds == pytest.approx(15.0)


def test_tokens_budget_stops_at_the_budget_and_records_everything():
    fake = FakeClock()
    clock = BudgetClock(BudgetConfig(tokens=1000), clock=fake)
    clock.start()
    for _ in range(3):
        fake.advance(2.0)
        clock.add(300, 1e9)
    assert clock.progress == pytest.approx(0.9) and not clock.done
    clock.add(100, 1e9)
    assert clock.done and clock.progress == 1.0
    assert (clock.tokens, clock.flops, clock.seconds) == (1000, 4e9, pytest.approx(6.0))
    clock.add(500, 0.0)
    assert clock.progress == 1.0 and clock.tokens == 1500


def test_flops_budget_stops_at_the_budget_and_records_everything():
    fake = FakeClock()
    clock = BudgetClock(BudgetConfig(flops=1e12), clock=fake)
    clock.start()
    clock.add(128, 4e11)
    fake.advance(1.0)
    clock.add(128, 4e11)
    assert clock.progress == pytest.approx(0.8) and not clock.done
    clock.add(128, 2e11)
    assert clock.done
    assert (clock.tokens, clock.flops, clock.seconds) == (384, pytest.approx(1e12), pytest.approx(1.0))


def test_paused_time_does_not_count():
    fake = FakeClock()
    clock = BudgetClock(BudgetConfig(seconds=100.0), clock=fake)
    clock.start()
    fake.advance(2.0)
    with clock.paused():
        fake.advance(100.0)
        assert clock.seconds == pytest.approx(2.0)
    assert not clock.done
    fake.advance(1.0)
    assert clock.seconds == pytest.approx(3.0)


def test_nested_pauses_resume_only_at_the_outermost_exit():
    fake = FakeClock()
    clock = BudgetClock(BudgetConfig(seconds=100.0), clock=fake)
    clock.start()
    fake.advance(1.0)
    with clock.paused():
        with clock.paused():
            fake.advance(10.0)
        fake.advance(10.0)  # still inside the outer pause
        assert clock.seconds == pytest.approx(1.0)
    fake.advance(1.0)
    assert clock.seconds == pytest.approx(2.0)


def test_pause_ends_when_the_body_raises():
    fake = FakeClock()
    clock = BudgetClock(BudgetConfig(seconds=100.0), clock=fake)
    clock.start()
    with pytest.raises(RuntimeError), clock.paused():
        raise RuntimeError("eval failed")
    fake.advance(3.0)
    assert clock.seconds == pytest.approx(3.0)


def test_start_inside_a_pause_counts_from_the_pause_end():
    fake = FakeClock()
    clock = BudgetClock(BudgetConfig(seconds=100.0), clock=fake)
    with clock.paused():
        clock.start()
        fake.advance(5.0)
    fake.advance(1.0)
    assert clock.seconds == pytest.approx(1.0)


def test_state_dict_round_trip_keeps_counting():
    fake = FakeClock()
    clock = BudgetClock(BudgetConfig(seconds=10.0), clock=fake)
    clock.start()
    fake.advance(7.0)
    clock.add(256, 3e9)
    state = json.loads(json.dumps(clock.state_dict()))  # plain values: fits a JSON or torch checkpoint
    assert state == {"seconds": 7.0, "tokens": 256, "flops": 3e9}

    fake2 = FakeClock(now=5.0)  # a new process: a different clock origin
    resumed = BudgetClock(BudgetConfig(seconds=10.0), clock=fake2)
    resumed.load_state_dict(state)
    fake2.advance(30.0)  # restart overhead before start() is not counted
    resumed.start()
    assert (resumed.seconds, resumed.tokens, resumed.flops) == (7.0, 256, 3e9)
    assert resumed.progress == pytest.approx(0.7)
    fake2.advance(2.0)
    assert resumed.seconds == pytest.approx(9.0) and not resumed.done
    fake2.advance(1.0)
    assert resumed.done


def test_load_state_dict_into_a_running_clock():
    fake = FakeClock()
    clock = BudgetClock(BudgetConfig(seconds=10.0), clock=fake)
    clock.start()
    fake.advance(3.0)
    clock.load_state_dict({"seconds": 6.0, "tokens": 0, "flops": 0.0})
    assert clock.seconds == pytest.approx(6.0)
    fake.advance(1.0)
    assert clock.seconds == pytest.approx(7.0)


def test_misuse_is_an_error():
    clock = BudgetClock(BudgetConfig(seconds=1.0), clock=FakeClock())
    clock.start()
    with pytest.raises(RuntimeError, match="twice"):
        clock.start()
    with pytest.raises(ValueError, match=">= 0"):
        clock.add(-1, 0.0)


def test_default_clock_is_real_time():
    clock = BudgetClock(BudgetConfig(seconds=3600.0))
    clock.start()
    assert 0.0 <= clock.seconds < 60.0 and not clock.done


def test_stop_freezes_seconds_even_across_a_later_pause():
    fake = FakeClock()
    clock = BudgetClock(BudgetConfig(seconds=100.0), clock=fake)
    clock.start()
    fake.advance(4.0)
    clock.stop()
    fake.advance(50.0)  # evaluation after training
    with clock.paused():
        fake.advance(1.0)
    fake.advance(7.0)  # a pause ending after stop() must not restart the count
    assert clock.seconds == pytest.approx(4.0) and clock.progress == pytest.approx(0.04)
