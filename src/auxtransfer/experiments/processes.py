"""Runs of a plan in processes of their own: the workers of ``execute(..., jobs=N)``.

``RunProcess`` trains one run in a new process started with ``"spawn"`` (a fresh
interpreter that imports what it needs and shares no state with the caller) and tells how
it ended (``RunProcess.outcome``): ``"finished"`` with the run's results, ``"stopped"``
(``stop_after``) or ``"failed"`` with the exception, or how the process died. The process
gets the run's settings and directory, and the training function and the data source
pickled (``pickled``): it cuts the run's data out of the source itself (``run_data_for``).
Everything it prints, warnings and tracebacks included, is appended to
``<run dir>/train.log``. It also sends each epoch's line (``train_run``'s ``log``) to the
caller, which reads them with ``RunProcess.read``; ``wait`` blocks until one of several
processes has sent a line or ended.
"""

from __future__ import annotations

import collections
import contextlib
import faulthandler
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

import torch

from .sources import DataSource, run_data_for, run_partition_for
from .train import RunConfig, train_run

__all__ = [
    "LOG_NAME",
    "RunJob",
    "RunProcess",
    "job_devices",
    "job_threads",
    "log_tail",
    "pickled",
    "usable_cores",
    "wait",
]

#: The file in a run directory that a run's process writes its output to.
LOG_NAME = "train.log"


@dataclass(frozen=True)
class RunJob:
    """What a process needs to train one run, besides the training function and the data.

    Attributes:
        id: The run's id.
        config: Its settings.
        run_dir: Its run directory.
        device: Where it trains, e.g. ``"cuda:1"``.
        resume: Continue it from its ``last.pt``.
        stop_after: Train at most this many epochs (None: to the end).
        cuda_graphs: ``train_run``'s ``cuda_graphs``.
        threads: Torch threads of the process (None: torch's default).
    """

    id: str
    config: RunConfig
    run_dir: Path
    device: str
    resume: bool
    stop_after: int | None
    cuda_graphs: bool
    threads: int | None

    @property
    def log(self) -> Path:
        """The file the process writes its output to, ``<run dir>/train.log``."""
        return self.run_dir / LOG_NAME


def pickled(train: Callable[..., Any], source: DataSource) -> tuple[bytes, bytes]:
    """``train`` and ``source`` pickled, as each run's process receives them.

    Raises:
        TypeError: One of them does not pickle (a lambda, a local function, an open file).
    """
    blobs = []
    for name, value in (("train", train), ("source", source)):
        try:
            blobs.append(pickle.dumps(value))
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            raise TypeError(
                f"Expected `{name}` to pickle, since with `jobs` > 1 each run trains in a process "
                f"of its own (a function defined at the top of a module pickles), but got "
                f"{value!r}: {error}"
            ) from None
    return blobs[0], blobs[1]


def job_devices(device: str | torch.device, jobs: int) -> list[torch.device]:
    """The device of each of ``jobs`` slots: ``"cuda"`` without an index spreads them over
    the visible GPUs (slot ``i`` on ``cuda:(i % torch.cuda.device_count())``); any other
    device (``"cpu"``, ``"cuda:1"``) takes every slot.

    Raises:
        ValueError: ``device`` is ``"cuda"`` and no GPU is visible.
    """
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None:
        return [device] * jobs
    count = torch.cuda.device_count()
    if count < 1:
        raise ValueError(
            "Expected a visible GPU to spread the jobs over with `device` 'cuda', but "
            "torch.cuda.device_count() is 0 (CUDA_VISIBLE_DEVICES?)."
        )
    return [torch.device("cuda", slot % count) for slot in range(jobs)]


def job_threads(device: str | torch.device, jobs: int) -> int | None:
    """The torch threads of each of ``jobs`` processes on ``device``.

    On the CPU, a share of the cores this process may use, ``usable_cores() // jobs`` (at
    least 1, at most as many threads as this process uses); None (torch's default) on a GPU or when
    ``OMP_NUM_THREADS`` is set, which the processes inherit.
    """
    if torch.device(device).type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, min(torch.get_num_threads(), usable_cores() // jobs))


def usable_cores() -> int:
    """The cores this process may run on (a SLURM or ``taskset`` limit), else all."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class RunProcess:
    """One run training in a process of its own, once ``start``-ed.

    Args:
        job: The run.
        payload: The training function and the data source, ``pickled``.
    """

    def __init__(self, job: RunJob, payload: tuple[bytes, bytes]) -> None:
        context = multiprocessing.get_context("spawn")
        self.job = job
        self.connection, self._child_end = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_train_in_process, args=(job, payload, self._child_end), name=f"run {job.id}"
        )
        self._ended: tuple[str, dict[str, Any] | None, str | None] | None = None
        self._closed = False  # the pipe read EOF: the process ended, told or not

    def start(self) -> None:
        """Start the process (it ignores SIGINT). Keep the ``RunProcess`` where ``stop``
        reaches it before calling this: a Ctrl-C while or just after it starts (raised
        here once it has started) must end it too."""
        try:
            with _interrupts_held():
                self.process.start()
        finally:
            # The pipe reads EOF once the process has ended, even unannounced.
            self._child_end.close()

    @property
    def ended(self) -> bool:
        """Whether the process has ended, as far as ``read`` has seen."""
        return self._ended is not None or self._closed

    def read(self) -> list[str]:
        """The epoch lines the process has sent since the last call, without waiting;
        ``ended`` is True once it has also sent its outcome or ended without one."""
        lines = []
        while not self.ended:
            try:
                if not self.connection.poll():
                    break
                kind, message = self.connection.recv()
            except (EOFError, OSError, pickle.UnpicklingError):  # died before or while telling
                self._closed = True
                break
            if kind == "epoch":
                lines.append(message)
            else:
                self._ended = message
        return lines

    def outcome(self) -> tuple[str, dict[str, Any] | None, str | None]:
        """``(status, results, error)`` once the process has ended (waiting for it):
        ``("finished", results, None)``, ``("stopped", None, None)`` or ``("failed", None,
        why)``: the exception and the first line of its message, or how the process died.
        The epoch lines not yet ``read`` are dropped."""
        while not self.ended:
            wait_for([self.connection])
            self.read()
        ended = self._ended
        if ended is None:
            _join(self.process)
            code = self.process.exitcode
            died = (
                f"killed by {signal.Signals(-code).name}"
                if code is not None and code < 0
                else f"ended with exit code {code}"
            )
            ended = ("failed", None, f"its process {died} before reporting an outcome")
        _join(self.process)
        self.connection.close()
        return ended

    def stop(self) -> None:
        """End the process if it is still running (a call interrupted)."""
        if self.process.pid is None:  # never started
            self.connection.close()
            return
        if self.process.is_alive():
            self.process.terminate()
        _join(self.process)
        self.connection.close()


def wait(processes: Sequence[RunProcess]) -> list[RunProcess]:
    """Block until at least one of ``processes`` has sent an epoch line or ended; those
    that have (``RunProcess.read`` them)."""
    by_connection = {process.connection: process for process in processes}
    return [by_connection[c] for c in wait_for(list(by_connection))]  # type: ignore[index]


def log_tail(path: Path, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a log (none when it does not exist)."""
    if not path.exists():
        return []
    with path.open(errors="replace") as log:
        return [line.rstrip("\n") for line in collections.deque(log, maxlen=lines)]


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """SIGINT held back while a process starts, and raised once it has started: Ctrl-C
    reaches the caller alone, which ends the runs' processes itself (``RunProcess.stop``),
    instead of every process printing a traceback of its own (one still starting, on the
    terminal), and none is left half started.

    The process inherits SIGINT blocked (a thread's signal mask survives ``fork`` and
    ``exec``) and ignores it from its first line (``_ignore_interrupts``). Here the thread
    blocks it; another thread may still take it, so the main thread's handler only notes
    it until the start is over and the mask is restored (a SIGINT held back by the mask is
    noted then too): nothing can interrupt the restoring, and the caller's handler gets a
    noted SIGINT afterwards.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks to inherit
        yield
        return
    # Started by the first process's start, multiprocessing's resource tracker unblocks
    # SIGINT after its own start, which that process would then inherit: started first.
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()
    noted = []
    main = threading.current_thread() is threading.main_thread()
    if main:  # signal handlers are the main thread's
        previous = signal.signal(signal.SIGINT, lambda number, frame: noted.append(number))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one held back is noted here
        if main:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if noted:  # to the process, as the terminal sends it: a thread of the caller's takes it
            os.kill(os.getpid(), signal.SIGINT)


def _ignore_interrupts() -> None:
    """SIGINT ignored in a run's process, and unblocked (``_interrupts_held``): one sent
    while it started (to the terminal's process group) is dropped."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _join(process: multiprocessing.process.BaseProcess, timeout: float = 30.0) -> None:
    """Wait for ``process`` to end; kill it when it hangs on its way out."""
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()


def _end_with_parent() -> None:
    """End this process when its parent ends, however it ends (SIGKILL included): no run
    trains on, orphaned, into a directory that the next call also writes."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        wait_for([parent.sentinel])
        os._exit(1)  # the checkpoints are written atomically

    threading.Thread(target=watch, name="end with parent", daemon=True).start()


def _train_in_process(job: RunJob, payload: tuple[bytes, bytes], connection: Connection) -> None:
    """The process of one run: output to its log, the run trained, the outcome sent."""
    _ignore_interrupts()
    _end_with_parent()
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with open(job.log, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    # Line by line, and a crash's traceback too: what a killed process printed last stays.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    faulthandler.enable()
    verb = "resuming" if job.resume else "training"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"--- {stamp} {verb} {job.id} on {job.device} (process {os.getpid()})", flush=True)
    try:
        if job.threads is not None:
            torch.set_num_threads(job.threads)
        train, source = pickle.loads(payload[0]), pickle.loads(payload[1])
        device = torch.device(job.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        train_data, test_data = run_data_for(job.config, source)
        partition = run_partition_for(job.config, source)
        extra: dict[str, Any] = {} if partition is None else {"partition": partition}
        if train is train_run:  # one line per epoch (another train logs its own way)

            def log_epoch(line: str) -> None:
                print(line)  # to train.log
                connection.send(("epoch", line))

            extra["log"] = log_epoch
        results = train(
            job.config, job.run_dir, train_data, test_data, mean=source.mean, std=source.std,
            device=device, resume=job.resume, progress=False, stop_after=job.stop_after,
            cuda_graphs=job.cuda_graphs, **extra,
        )  # fmt: skip
    except BaseException as error:  # SystemExit too: the parent is told, the log has it
        traceback.print_exc()
        sys.stderr.flush()
        first = str(error).strip().split("\n", 1)[0]  # the log holds the rest
        why = f"{type(error).__name__}: {first}" if first else type(error).__name__
        connection.send(("ended", ("failed", None, why)))
        sys.exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    ended = ("stopped", None, None) if results is None else ("finished", results, None)
    connection.send(("ended", ended))
