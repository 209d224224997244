"""Drawing a report's figures on two cores: half of them in a forked child while this process draws the rest.

Drawing is matplotlib's Python, one core's work, and the report is written after the checks, when torch has
left the machine's other cores idle. A fork (Linux only) starts at once with matplotlib already imported; the
child draws, sends its PNGs back through a pipe as one pickle, and leaves with ``os._exit`` (no cleanup, no
flushing of buffers it shares with this process). Whenever the child cannot start, fails, or does not answer, its
figures are drawn here: the report never depends on it.
"""
from __future__ import annotations

import contextlib
import gc
import os
import pickle
import select
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
#: when the background child is this many jobs behind as the checks end, this process draws from the back too
HELP_FROM = 3
#: seconds to wait for the child after this process has drawn its own half (it draws as many, as fast: a child
#: that is this late is stuck, and is killed)
PATIENCE_S = 60.0


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
    """``[fn(x) for x in items]``, the odd-indexed items computed in a forked child when that helps (see
    :func:`two_cores`, MIN_ITEMS); ``fn`` must touch nothing but its argument (no torch, no CUDA: only the
    calling thread exists in the child)."""
    items = list(items)
    if len(items) < MIN_ITEMS or not two_cores():
        return [fn(x) for x in items]
    theirs = items[1::2]
    child = _Child.start(fn, theirs)
    try:
        mine = [fn(x) for x in items[0::2]]
        got = child.result() if child is not None else None
    finally:
        if child is not None:
            child.close()
    got = got if got is not None and len(got) == len(theirs) else [fn(x) for x in theirs]
    out: list = [None] * len(items)
    out[0::2], out[1::2] = mine, got
    return out


class _Child:
    """A forked process computing ``[fn(x) for x in items]`` into a pipe."""

    def __init__(self, pid: int, fd: int):
        self.pid, self.fd = pid, fd

    @classmethod
    def start(cls, fn: Callable, items: list) -> Optional["_Child"]:
        read, write = os.pipe()
        try:
            with warnings.catch_warnings():  # Python 3.12+ warns of fork with threads alive (torch's idle pool):
                warnings.simplefilter("ignore", DeprecationWarning)  # the child runs none of their code
                pid = os.fork()
        except OSError:  # no memory for the page tables, a process limit: draw everything here
            os.close(read)
            os.close(write)
            return None
        if pid == 0:
            os.close(read)
            _serve(write, fn, items)  # never returns
        os.close(write)
        return cls(pid, read)

    def result(self) -> Optional[list]:
        """The child's list, or None if it failed or took longer than PATIENCE_S."""
        data = self._read()
        if data is None:
            return None
        try:
            _, status = os.waitpid(self.pid, 0)
            done = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        except ChildProcessError:  # reaped by someone else (a SIGCHLD handler): the data decides
            done = True
        self.pid = 0
        try:
            return pickle.loads(data) if done else None
        except Exception:  # cut short: the child died while writing
            return None

    def _read(self) -> Optional[bytes]:
        """Everything the child writes, up to its end of the pipe; None if PATIENCE_S pass first. (poll, not
        select: a process with many files open may be given a descriptor past select's limit of 1024.)"""
        chunks, deadline = [], time.monotonic() + PATIENCE_S
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return None
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def close(self) -> None:
        """Kill the child if it is still there (an interrupt, a timeout), reap it, close the pipe."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = 0
        os.close(self.fd)


def _serve(fd: int, fn: Callable, items: list) -> None:
    """The child's whole life: compute, write, leave at once (``os._exit``: no atexit handlers, no buffers
    flushed twice, no finally blocks of the parent's stack run)."""
    code = 1
    try:
        data = pickle.dumps([fn(x) for x in items], protocol=pickle.HIGHEST_PROTOCOL)
        with os.fdopen(fd, "wb") as pipe:
            pipe.write(data)
        code = 0
    except BaseException:  # noqa: B036 - an interrupt too: the parent draws these figures itself
        pass
    finally:
        os._exit(code)


class Background:
    """``fn(job)`` computed in a forked child as jobs arrive, while this process goes on (the checks run on).

    Each job is pickled into a private folder and its number sent down a pipe; the child claims it (a file created
    exclusively), computes it and writes the result beside it. :meth:`results` ends the child: when it is still
    HELP_FROM or more jobs behind, this process claims and computes jobs from the last one backward while the child
    goes on from the front, until they meet. A job nobody finished (no second core, a fork that failed, a child
    that died or stalled) is missing from the results, for the caller to compute. ``fn`` must touch nothing but its
    argument (no torch, no CUDA).
    """

    def __init__(self, fn: Callable[[T], R]):
        self.fn, self.pid, self.fd, self.folder, self.failed = fn, 0, -1, "", False
        self.jobs: list = []

    def submit(self, job: T) -> Optional[int]:
        """Send one job; its number, or None when no child runs it."""
        if not self.pid and (self.failed or not self._start()):
            return None
        n, path = len(self.jobs), os.path.join(self.folder, f"{len(self.jobs)}.job")
        try:
            with open(path + ".tmp", "wb") as f:
                pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(path + ".tmp", path)
            os.write(self.fd, f"{n}\n".encode())
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            self.close()
            self.failed = True
            return None
        self.jobs.append(job)
        return n

    def _start(self) -> bool:
        if not two_cores():
            self.failed = True
            return False
        self.folder = tempfile.mkdtemp(prefix="babysitter-figures-")
        read, write = os.pipe()
        try:
            with warnings.catch_warnings():  # see _Child.start
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            self.failed = True
            return False
        if pid == 0:
            os.close(write)
            _serve_jobs(read, self.folder, self.fn)  # never returns
        os.close(read)
        self.pid, self.fd = pid, write
        return True

    def results(self, patience: float = PATIENCE_S / 6) -> dict[int, R]:
        """End the child after the jobs sent so far, helping it from the back when it is far behind and waiting
        while it still finishes a job every ``patience`` seconds; the results, by job number (the folder is
        removed)."""
        if not self.pid:
            return {}
        os.close(self.fd)
        self.fd, out = -1, {}
        behind = [n for n in range(len(self.jobs)) if not os.path.exists(self._path(n, "claim"))]
        if len(behind) >= HELP_FROM:
            for n in reversed(behind):
                if not claim(self._path(n, "claim")):
                    break  # the child got here: the rest is its
                out[n] = self.fn(self.jobs[n])
        self._wait(patience)
        for n in range(len(self.jobs)):
            if n not in out:
                with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError), \
                        open(self._path(n, "out"), "rb") as f:
                    out[n] = pickle.load(f)
        self.close()
        return out

    def _path(self, n: int, kind: str) -> str:
        return os.path.join(self.folder, f"{n}.{kind}")

    def _wait(self, patience: float) -> None:
        """Until the child exits, or finishes no job for ``patience`` seconds."""
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
        """Kill the child if it is still there, reap it, remove the folder (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
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


def _serve_jobs(fd: int, folder: str, fn: Callable) -> None:
    """The background child's whole life: each job number read from the pipe, computed, its result written
    (atomically) beside it; at the pipe's end, leave with ``os._exit``. Ctrl-C is the parent's to handle."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        gc.disable()  # the parent's whole heap is here too: collections would walk it for nothing
        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                path = os.path.join(folder, line.decode().strip())
                if not claim(path + ".claim"):
                    continue  # the parent took it
                with open(path + ".job", "rb") as f:
                    result = fn(pickle.load(f))
                with open(path + ".tmp", "wb") as f:
                    pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(path + ".tmp", path + ".out")
        code = 0
    except BaseException:  # noqa: B036 - whatever it did not finish, the parent computes
        pass
    finally:
        os._exit(code)
