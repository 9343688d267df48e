"""interrupts.held: a Ctrl-C (or SIGTERM) that comes inside the block is acted on at its end."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from pairwise_dask.interrupts import held


def _ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)


def test_a_ctrl_c_inside_the_block_is_raised_at_its_end() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            _ctrl_c()
            done.append("after the signal")  # the block goes on
            done.append("to its end")
    assert done == ["after the signal", "to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_ctrl_c_is_raised_at_once() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            _ctrl_c()
            done.append(1)
            _ctrl_c()
            done.append(2)  # not reached
    assert done == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_signal_comes_before_an_error_of_the_block() -> None:
    with pytest.raises(KeyboardInterrupt) as e:
        with held():
            _ctrl_c()
            raise RuntimeError("Nanny failed to start")
    assert isinstance(e.value.__cause__, RuntimeError)


def test_without_a_signal_errors_and_results_pass_through() -> None:
    with pytest.raises(ValueError):
        with held():
            raise ValueError("bad")
    with held():
        x = 1
    assert x == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_sigterm_handler_is_held_too() -> None:
    class Stop(BaseException):
        pass

    def stop(signum: int, frame: object) -> None:
        raise Stop

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stop):
            with held():
                os.kill(os.getpid(), signal.SIGTERM)
                assert signal.getsignal(signal.SIGTERM) is not stop
        assert signal.getsignal(signal.SIGTERM) is stop
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_it_does_nothing() -> None:
    seen = []

    def body() -> None:
        with held():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]
