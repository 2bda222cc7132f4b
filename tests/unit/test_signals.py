"""SIGTERM: a flag while a trainer polls it at step boundaries, an immediate one-line stop anywhere else."""

import os
import signal

import pytest

from lossguided import signals


@pytest.fixture(autouse=True)
def handler():
    before = signal.getsignal(signal.SIGTERM)
    signals.install()
    signals.clear()
    yield
    signals.clear()
    signal.signal(signal.SIGTERM, before)


def test_outside_training_sigterm_stops_at_once():
    with pytest.raises(signals.Preempted, match="stopped by SIGTERM"):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)  # let the handler run


def test_while_polling_it_only_sets_the_flag():
    with signals.polling():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0)
        assert signals.stop_requested()


def test_a_forked_child_ends_on_sigterm_as_usual():
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the default disposition, so SIGTERM ends it
        os.write(ready_w, b"x")
        signal.pause()
        os._exit(0)
    os.read(ready_r, 1)  # the child runs (its disposition was reset at the fork)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_the_cli_puts_the_previous_handler_back_when_it_returns():
    from lossguided.cli import main

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    main(["select", "missing.npz", "--out", "x.csv"])  # fails at once: the handler must come back anyway
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
