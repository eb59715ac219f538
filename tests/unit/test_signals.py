"""The stop signals of Trainer.fit, in this process: the first sets a flag, the second raises."""

from __future__ import annotations

import os
import signal

import pytest

from entropy_rl.train.signals import Interrupted, StoppedAtOnce, StopSignals, exit_code


def test_the_first_signal_is_noted_the_second_stops_at_once_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    # what SIGINT had before: Python's handler, or SIG_IGN under a shell without job control
    # that started the test run in the background
    before_int = signal.getsignal(signal.SIGINT)
    seen: list[int] = []
    with StopSignals(seen.append) as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the next bytecode: nothing raised
        assert stop.received == signal.SIGTERM and seen == [signal.SIGTERM]
        with pytest.raises(StoppedAtOnce) as info:
            os.kill(os.getpid(), signal.SIGINT)
        assert info.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGINT) is before_int


def test_exit_codes_are_the_shells():
    assert exit_code(Interrupted(signal.SIGTERM, 3, saved=True)) == 143
    assert exit_code(StoppedAtOnce(signal.SIGINT)) == 130
    assert exit_code(KeyboardInterrupt()) == 130  # a Ctrl-C no handler saw
