"""Drawing a report's figures on two cores: forked workers (:class:`Background`) draw while this process goes on.

Drawing is matplotlib's Python, one core's work. A fork (Linux only) starts at once with what this process has
imported; a worker computes jobs from a private folder, writes each result beside it, and leaves with ``os._exit``
(no cleanup, no flushing of buffers it shares with this process). Whatever a worker cannot start, fails at, or does
not finish is computed here: the report never depends on it. :func:`split_map` shares one list of figures with one
worker; :mod:`babysitter.render.prefetch` sends figures to two workers while the checks still run.
"""
from __future__ import annotations

import contextlib
import gc
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import warnings
from typing import Callable, Optional, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: fewer items than this are all drawn here: the fork and the pipe would cost more than they save
MIN_ITEMS = 4
#: seconds without a finished job after which a worker is deemed stuck, and is killed
PATIENCE_S = 10.0


def two_cores() -> bool:
    """Whether a forked helper can run beside this process: Linux (macOS forbids much after fork), and more than one
    core that this process may use."""
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    try:
        return len(os.sched_getaffinity(0)) > 1
    except (AttributeError, OSError):
        return (os.cpu_count() or 1) > 1


def split_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]``, the odd-indexed items computed by a forked :class:`Background` worker while this
    process computes the others, when that helps (see :func:`two_cores`, MIN_ITEMS); whatever the worker did not
    finish is computed here. ``fn`` must touch nothing but its argument (no torch, no CUDA)."""
    items = list(items)
    if len(items) < MIN_ITEMS or not two_cores():
        return [fn(x) for x in items]
    with Background(fn, workers=1) as worker:
        sent = {worker.submit(x): i for i, x in enumerate(items) if i % 2}
        out = {i: fn(x) for i, x in enumerate(items) if not i % 2}
        done = worker.results()
    for n, i in sent.items():
        out[i] = done[n] if n is not None and n in done else fn(items[i])
    return [out[i] for i in range(len(items))]


class Background:
    """``fn(job)`` computed by forked workers as jobs arrive, while this process goes on (the checks run on).

    :meth:`start` forks one worker, which runs ``warm()`` (imports, a first figure) and then forks a sibling, so
    that both are ready by the time jobs come: each job is pickled into a private folder, where an idle worker claims
    it (a file created exclusively), computes it and writes the result beside it. :meth:`results` tells the workers
    to finish the jobs sent so far and leave, and returns what they finished. A job nobody finished (no second core,
    a fork that failed, a worker that died or stalled) is missing from the results, for the caller to compute.
    ``fn`` and ``warm`` must touch nothing but their arguments (no torch, no CUDA).
    """

    def __init__(self, fn: Callable[[T], R], warm: Optional[Callable[[], None]] = None, workers: int = 2):
        self.fn, self.warm, self.workers = fn, warm, workers
        self.pid, self.folder, self.failed, self.sent = 0, "", False, 0

    def start(self) -> bool:
        """Fork the workers (once); False when they cannot run here."""
        if self.pid or self.failed:
            return bool(self.pid)
        if not two_cores():
            self.failed = True
            return False
        self.folder = tempfile.mkdtemp(prefix="babysitter-figures-")
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns of fork with threads alive (torch's idle pool):
                warnings.simplefilter("ignore", DeprecationWarning)  # the workers run none of their code
                pid = os.fork()
        except OSError:
            self.failed = True
            return False
        if pid == 0:
            _serve_jobs(self.folder, self.fn, self.warm, self.workers - 1, owner=os.getppid())  # never returns
        self.pid = pid
        return True

    def submit(self, job: T) -> Optional[int]:
        """Send one job; its number, or None when no worker runs it."""
        if not self.start():
            return None
        n, path = self.sent, os.path.join(self.folder, f"{self.sent}.job")
        try:
            with open(path + ".tmp", "wb") as f:
                pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(path + ".tmp", path)
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            self.close()
            self.failed = True
            return None
        self.sent += 1
        return n

    def results(self, patience: float = PATIENCE_S) -> dict[int, R]:
        """Let the workers finish the jobs sent so far and leave, waiting while they still finish one every
        ``patience`` seconds; the results, by job number (the folder is removed)."""
        if not self.pid:
            return {}
        out: dict[int, R] = {}
        try:
            os.close(os.open(os.path.join(self.folder, "end"), os.O_CREAT | os.O_WRONLY))
            self._wait(patience)
            for n in range(self.sent):
                with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError), \
                        open(os.path.join(self.folder, f"{n}.out"), "rb") as f:
                    out[n] = pickle.load(f)
        finally:
            self.close()
        return out

    def _wait(self, patience: float) -> None:
        """Until the first worker exits (after its sibling), or no job is finished for ``patience`` seconds."""
        done, last = -1, time.monotonic()
        while self.pid:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0]:
                    self.pid = 0
                    return
            except ChildProcessError:  # reaped by someone else (a SIGCHLD handler)
                self.pid = 0
                return
            now = sum(name.endswith(".out") for name in os.listdir(self.folder))
            if now > done:
                done, last = now, time.monotonic()
            elif time.monotonic() - last > patience:
                return
            time.sleep(0.005)

    def close(self) -> None:
        """Kill the workers if they are still there, reap the first, remove the folder (idempotent)."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)  # the workers' own group: the sibling too
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            self.pid = 0
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = ""

    def __enter__(self) -> "Background":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def claim(path: str) -> bool:
    """Create ``path`` exclusively: True for the one process that did."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _serve_jobs(folder: str, fn: Callable, warm: Optional[Callable], siblings: int, owner: int) -> None:
    """A background worker's whole life: warm up, fork ``siblings`` more (they share the warm imports), then claim
    and compute jobs until the folder holds an ``end`` mark and no job is left; the first worker waits for its
    siblings, and each leaves with ``os._exit``. Ctrl-C is the parent's to handle (the workers run in a group of
    their own, which the terminal's Ctrl-C does not reach)."""
    code, kids = 1, []
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        gc.disable()  # the parent's whole heap is here too: collections would walk it for nothing
        if siblings:
            os.setpgid(0, 0)
        if warm is not None:
            warm()
        for _ in range(siblings):
            pid = os.fork()
            if pid == 0:
                kids, siblings = [], 0
                break
            kids.append(pid)
        _work(folder, fn, owner)
        code = 0
    except BaseException:  # noqa: B036 - whatever it did not finish, the parent computes
        pass
    finally:
        for pid in kids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if kids and not _alive(owner):  # the first worker, its owner killed: nobody else will remove the folder
            shutil.rmtree(folder, ignore_errors=True)
        os._exit(code)


def _work(folder: str, fn: Callable, owner: int) -> None:
    """Claim and compute the folder's jobs, lowest number first, until the end mark and no job left unclaimed, or
    until the process that started the workers (``owner``) is gone (killed before it could end them)."""
    while True:
        ending = os.path.exists(os.path.join(folder, "end"))
        jobs = sorted(int(name[:-4]) for name in os.listdir(folder) if name.endswith(".job"))
        took = False
        for n in jobs:
            path = os.path.join(folder, str(n))
            if not claim(path + ".claim"):
                continue
            with open(path + ".job", "rb") as f:
                result = fn(pickle.load(f))
            with open(path + ".tmp", "wb") as f:
                pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(path + ".tmp", path + ".out")
            took = True
            break  # look again from the lowest: newer jobs may have come
        if not took:
            if ending or not _alive(owner):
                return
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's: not ours, but alive
        return True
