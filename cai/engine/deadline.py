"""Waiting on an engine, with a deadline: `call_with_timeout` turns a stuck engine into an
EngineError that says what was waited on and for how long, never a silent hang. PPO's rollouts,
log-prob probes and weight syncs wait through it (`engine_timeout_s`).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cai.errors import EngineError

T = TypeVar("T")


class _Deadline(BaseException):
    """Raised by the alarm handler. A BaseException, so that no `except Exception` inside an
    engine can swallow it."""


def call_with_timeout(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run fn() and wait at most timeout_s for it; a timeout raises an EngineError naming `what`.

    In the main thread the call runs right there, under a SIGALRM deadline: vLLM's CPU backend
    must be called from the thread that started it (its attention kernels check the OpenMP
    thread count, which differs in a new thread). Elsewhere fn runs in a daemon thread that is
    abandoned on timeout (a daemon cannot keep the process alive at exit either)."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        return _call_with_alarm(fn, timeout_s, what)
    return _call_in_thread(fn, timeout_s, what)


def _timeout_error(timeout_s: float, what: str) -> EngineError:
    return EngineError(
        f"the engine did not finish {what} within {timeout_s:g} s",
        fix="check that the engine is alive (memory, a crashed worker in the log above); "
            "raise engine_timeout_s if this much work is expected to take longer",
    )


def _call_with_alarm(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    def on_alarm(signum, frame):
        raise _Deadline

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, _ = signal.setitimer(signal.ITIMER_REAL, timeout_s)
    t0 = time.monotonic()
    try:
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Deadline:  # also when the alarm fires in the instant between the return and the disarm
        raise _timeout_error(timeout_s, what) from None
    finally:
        signal.signal(signal.SIGALRM, previous_handler)
        if outer_delay:  # an enclosing deadline keeps running
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - t0), 1e-3))


def _call_in_thread(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name=f"cai-engine: {what}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise _timeout_error(timeout_s, what)
    if "error" in box:
        raise box["error"]
    return box["value"]
