"""Ctrl-C that cannot be lost.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT
arrives. If that is a finalizer (a ``__del__`` method or a weakref callback run by the garbage
collector, e.g. SQLAlchemy's ``_collection_gced`` behind MLflow's tracking store), the exception
is printed as "Exception ignored in ..." and dropped, and the program goes on as if the key
had never been pressed: a training run with a large epoch budget then never stops.

While :func:`installed` is active (the CLI wraps every command in it), SIGINT also records a
request, and long loops call :func:`check` at safe points (each training step, each ablation
cell), which raises ``KeyboardInterrupt`` again if a request is pending. Library code that is
not run under the CLI is unaffected: :func:`check` does nothing until a request is recorded.

A task in a pool worker runs under :func:`raised_once` instead: Ctrl-C reaches a worker twice
(from the terminal, which signals the whole foreground process group, and forwarded by the
pool's owner, :meth:`fmri2img.core.executors.LocalExecutor.interrupt`), and the second must not
cut short the cleanup that the first started (removing a cell's partial outputs).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

_requested = False


def _on_sigint(signum, frame) -> None:
    """SIGINT handler: record the request, then behave like Python's default handler."""
    global _requested
    _requested = True
    raise KeyboardInterrupt


def _on_sigint_once(signum, frame) -> None:
    """SIGINT handler of :func:`raised_once`: record the request, ignore later ones, raise."""
    global _requested
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _requested = True
    raise KeyboardInterrupt


def requested() -> bool:
    """Whether SIGINT arrived while :func:`installed` was active (and has not been reset)."""
    return _requested


def check() -> None:
    """Raise ``KeyboardInterrupt`` if SIGINT arrived and its exception may have been swallowed."""
    if _requested:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _quiet_swallowed_interrupts() -> Iterator[None]:
    """Inside the block a KeyboardInterrupt dropped by a finalizer is not reported as "Exception
    ignored" (:func:`check` raises it again); the previous unraisable hook is restored on exit."""
    previous_hook = sys.unraisablehook

    def quiet_hook(unraisable) -> None:
        # the swallowed KeyboardInterrupt is raised again by check(): no "Exception ignored" traceback
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    sys.unraisablehook = quiet_hook
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Record SIGINT for :func:`check` inside the block (main thread only; elsewhere a no-op).

    A KeyboardInterrupt dropped by a finalizer is not reported as "Exception ignored" (it is
    raised again at the next :func:`check`). The previous handler, unraisable hook and a clear
    request state are restored on exit."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:  # e.g. a background job: Ctrl-C was never meant to reach us
        yield
        return
    _requested = False
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        with _quiet_swallowed_interrupts():
            yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested = False


@contextlib.contextmanager
def raised_once() -> Iterator[None]:
    """A pool worker's task: the first SIGINT inside the block raises ``KeyboardInterrupt`` (and
    is recorded for :func:`check`), later ones are ignored, so that the cleanup it starts runs to
    its end. SIGINT is ignored after the block (an idle worker leaves Ctrl-C to the pool's owner,
    which shuts the pool down). Main thread only, like every signal handler."""
    global _requested
    _requested = False
    signal.signal(signal.SIGINT, _on_sigint_once)
    try:
        with _quiet_swallowed_interrupts():
            yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _requested = False
