"""How each command-line tool runs: one-line errors, signals, a closed stdout, output locks and the environment gate.

Imports neither torch nor the rest of the package, so that se4lip-patch (a text patcher) starts in any
environment, the renderers' old ones included.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import signal
import sys
import threading
from pathlib import Path


def error(prog: str, message: object) -> None:
    """Report one problem as one line on stderr (printed above any progress bar)."""
    from tqdm import tqdm

    tqdm.write(f"{prog}: {' '.join(str(message).split())}", file=sys.stderr)


def fail(prog: str, message: object) -> int:
    """Report a fatal problem as one line on stderr; returns the exit status 1."""
    error(prog, message)
    return 1


class Stopped(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP, raised where the program is so that ``finally`` blocks and atomic writers clean
    up."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    # An exception cannot unwind through a native module's initialisation (soxr's aborts the process): a signal
    # arriving during an import is delivered again a moment later instead.
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        frame = frame.f_back
    raise Stopped(signum)


class _Stdout:
    """sys.stdout while a tool runs: a reader that went away (``| head -1``) or a full disk (``> /dev/full``)
    ends the printing, never the work; nothing is reported for it (the files written are the results)."""

    def __init__(self, stream):
        self.stream, self.lost = stream, False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                return self.stream.write(text)
            except OSError:  # BrokenPipeError, ENOSPC
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self.stream.flush()
            except OSError:
                self._lose()

    def _lose(self) -> None:
        self.lost = True
        try:  # so that the interpreter's own flush at exit finds somewhere to write
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def tool(prog: str, training_env: bool = False):
    """Decorate a ``main``: SIGINT (Ctrl-C), SIGTERM and SIGHUP end it with one line on stderr and the
    conventional exit status 128 + signal number, with no temporary file left behind. A signal the tool was
    started with ignored stays ignored (``nohup`` ignores SIGHUP, a shell's background job SIGINT).
    With ``training_env``, an environment that lacks what the tool needs (:func:`tools_env_problem`) is
    refused in one line before anything else."""
    def wrap(main):
        @functools.wraps(main)
        def run(argv=None) -> int:
            problem = tools_env_problem() if training_env else None
            if problem:
                return fail(prog, problem)
            previous = {}
            if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
                previous = {sig: signal.signal(sig, _raise_stopped) for sig in STOP_SIGNALS
                            if signal.getsignal(sig) is not signal.SIG_IGN}
            stdout, sys.stdout = sys.stdout, _Stdout(sys.stdout)
            try:
                return main(argv)
            except KeyboardInterrupt as err:
                signum = getattr(err, "signum", signal.SIGINT)
                error(prog, f"stopped by {signal.Signals(signum).name}; no partial output was kept")
                return 128 + signum
            finally:
                sys.stdout.flush()
                sys.stdout = stdout
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
        return run
    return wrap


def holding(prog: str, target: Path, run, *args) -> int:
    """``run(*args)`` holding the exclusive lock on the output ``target``: a second tool writing it fails in one
    line at once (it would otherwise replace or mix with the first one's output)."""
    from . import atomic

    try:
        with atomic.exclusive(target):
            return run(*args)
    except atomic.Busy as err:
        return fail(prog, err)


def usage(prog: str, message: object) -> int:
    """Report a bad argument as one line on stderr; returns the usage exit status 2."""
    error(prog, f"error: {message}")
    return 2


def tools_env_problem() -> str | None:
    """What se4lip-prepare, se4lip-train and se4lip-eval need that this environment lacks, in one line; or None.

    They need more than the renderers' old environments (Python 3.7/3.8, torch 1.12) hold: Python 3.9 (dict
    union, argparse.BooleanOptionalAction, mediapipe's wheels) and torch 1.13 (torch.load(weights_only=)).
    se4lip-extract and the adapters run there.
    """
    import torch

    torch_version = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if sys.version_info >= (3, 9) and torch_version >= (1, 13):
        return None
    return (f"needs Python >= 3.9 and torch >= 1.13 (this is Python {platform.python_version()} with torch "
            f"{torch.__version__}); se4lip-extract and the renderer adapters work here")


def setup_logging(prog: str) -> None:
    """INFO messages of the package (progress notes, warnings) to stderr, named by the tool (as its errors are),
    for the long-running tools."""
    logging.basicConfig(level=logging.INFO, format=f"{prog}: %(message)s")
    # other libraries' notes are not the tool's ("se4lip-prepare: generated new fontManager", matplotlib's first
    # run); their warnings still come through
    for name in ("matplotlib", "PIL", "h5py", "absl"):
        logging.getLogger(name).setLevel(logging.WARNING)
