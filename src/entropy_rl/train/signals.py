"""Stopping on SIGINT (Ctrl-C) and SIGTERM (SLURM, Kubernetes, cloud preemption) without
losing a step.

The first signal only sets a flag: ``Trainer.fit`` finishes the step in progress (its rows are
logged once), saves a checkpoint of that step and raises :class:`Interrupted`. A resume then
equals an unbroken run. A second signal raises ``KeyboardInterrupt`` at once: nothing more is
saved and a resume goes on from the last checkpoint, as after a kill.

What this module does not do: it does not abandon a step half-way (the weights and optimizer
would be part-updated, so no checkpoint of that moment could equal an unbroken run), and it
installs nothing outside the main thread (Python delivers signals there only).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

SIGINT = int(signal.SIGINT)
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(e: BaseException) -> int:
    """The shell's code for a process ended by the signal behind ``e``: 130 for SIGINT (and a
    plain KeyboardInterrupt), 143 for SIGTERM."""
    return 128 + int(getattr(e, "signum", SIGINT))


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal after finishing step ``step``; ``saved``: whether a
    checkpoint of that step was written (not at step 0, where nothing was trained)."""

    def __init__(self, signum: int, step: int, *, saved: bool) -> None:
        super().__init__(f"{signal_name(signum)} at step {step}")
        self.signum = signum
        self.step = step
        self.saved = saved


class StoppedAtOnce(KeyboardInterrupt):
    """A second signal: training stopped mid-step without saving."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"second signal ({signal_name(signum)})")
        self.signum = signum


class StopSignals:
    """``with StopSignals(on_first) as stop:`` the first SIGINT/SIGTERM sets ``stop.received``
    (its number) and calls ``on_first(signum)``; a second raises KeyboardInterrupt. The previous
    handlers come back on exit."""

    def __init__(self, on_first: Callable[[int], None] | None = None) -> None:
        self.on_first = on_first
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise StoppedAtOnce(signum)
        self.received = signum
        if self.on_first is not None:
            self.on_first(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


def sigterm_as_interrupt() -> None:
    """Make SIGTERM raise KeyboardInterrupt like SIGINT (for the CLI's start-up, before
    ``fit`` installs :class:`StopSignals`): a clean one-line exit instead of a silent 143."""

    def _raise(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum, 0, saved=False)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
