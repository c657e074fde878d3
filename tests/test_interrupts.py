"""Ctrl-C is not lost when its KeyboardInterrupt lands in a finalizer (fmri2img.core.interrupts)."""

from __future__ import annotations

import gc
import signal
import sys

import numpy as np
import pytest
import torch

from fmri2img.core import interrupts

# the swallowed KeyboardInterrupts are reported by pytest as unraisable exceptions: expected here
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class _SignalsInFinalizer:
    """Delivers SIGINT while Python runs its ``__del__``: the KeyboardInterrupt is raised inside
    the finalizer, printed as "Exception ignored" and dropped, as with SQLAlchemy's weakref
    callbacks behind MLflow."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)
        for _ in range(1000):  # the handler runs at the next bytecode boundaries, here
            pass


def _swallowed_ctrl_c():
    obj = _SignalsInFinalizer()
    del obj
    gc.collect()


def test_a_ctrl_c_swallowed_by_a_finalizer_is_raised_again(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with interrupts.installed():
        _swallowed_ctrl_c()  # no exception reaches us: Python ignored it
        assert interrupts.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    assert reported == []  # and no "Exception ignored ... KeyboardInterrupt" traceback was printed
    assert not interrupts.requested()  # reset on exit; the previous handler and hook are back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sys.unraisablehook == reported.append
    interrupts.check()  # nothing pending: no-op


def test_without_the_handler_the_ctrl_c_is_lost():
    """The failure mode the module exists for (guards the test above against passing vacuously)."""
    _swallowed_ctrl_c()
    assert not interrupts.requested()
    interrupts.check()


def test_training_stops_at_the_next_step_after_a_swallowed_ctrl_c():
    from fmri2img.data.trials import Dataset
    from fmri2img.models.loop import TrainSpec, train_module

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(64, 5)).astype(np.float32), rng.normal(size=(64, 3)).astype(np.float32)
    module = torch.nn.Linear(5, 3)
    steps = []

    def loss_fn(pred, target, weight):
        steps.append(1)
        if len(steps) == 3:
            _swallowed_ctrl_c()
        return ((pred - target) ** 2).mean()

    with interrupts.installed(), pytest.raises(KeyboardInterrupt):
        train_module(module, loss_fn, Dataset(X, Y), Dataset(X, Y),
                     TrainSpec(epochs=1000, lr=1e-3, weight_decay=0.0, batch_size=16, patience=1000, progress=False),
                     rng)
    assert len(steps) < 8  # stopped at the next step (the loss also scores validation), not after 1000 epochs


_EXEC_INTERRUPTED = '''
import os, signal, sys
from fmri2img.cli import _common
from fmri2img.cli._common import handle_errors

if "--without-fix" in sys.argv:
    _common._forget_escaped_interrupt = lambda: None

@handle_errors
def command():
    # SIGINT lands while code run by exec() of a string executes (as in some libraries)
    exec("import os, signal, time\\nos.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(100): time.sleep(0.05)")

if __name__ == "__main__":
    import sys, typer
    try:
        command()
    except typer.Exit as exc:  # what click does with it in a real command
        sys.exit(exc.exit_code)
'''


@pytest.mark.parametrize("fixed", [True, False], ids=["wrapper", "without-the-fix"])
def test_python_m_exits_130_when_the_interrupt_left_an_exec(tmp_path, fixed):
    """Under ``python -m``, CPython kills the process with SIGINT at exit if a KeyboardInterrupt
    ever left an exec of a string, even when it was handled; the CLI wrapper clears that."""
    import os
    import subprocess

    (tmp_path / "exec_interrupted.py").write_text(_EXEC_INTERRUPTED)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "exec_interrupted", *([] if fixed else ["--without-fix"])],
                          env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == (130 if fixed else -signal.SIGINT), done.stderr
    assert "Interrupted;" in done.stderr
