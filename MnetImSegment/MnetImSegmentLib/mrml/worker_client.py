"""Runs :mod:`MnetImSegmentLib.engine.worker` in a child process and reads its events (no MRML, no Qt).

The widget polls :meth:`WorkerProcess.poll` from a ``QTimer``; tests poll it in a loop. Two daemon
threads read the child's stdout (JSON events) and stderr (kept for the error message) into a queue,
so polling never blocks. When the child ends without a ``done`` or ``error`` event (a crash, a
kill, the out-of-memory killer) :meth:`poll` reports one ``error`` event whose sentence names the
exit code or signal and the last line the child wrote to stderr.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

#: The package folder (MnetImSegmentLib) and the folder that holds it, which goes on the child's PYTHONPATH.
PACKAGE_DIR = Path(__file__).resolve().parents[1]
WORKER_MODULE = f"{PACKAGE_DIR.name}.engine.worker"
STDERR_LINES = 50


def workerInterpreter(executable: Optional[str] = None) -> str:
    """The Python to run the worker with.

    Inside Slicer ``sys.executable`` is the Slicer application itself; its plain Python,
    ``PythonSlicer``, lies next to it. Elsewhere (tests, scripts) ``sys.executable`` is a Python.
    """
    executable = Path(executable or sys.executable)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = executable.parent / name
        if candidate.is_file():
            return str(candidate)
    return str(executable)


def childEnvironment(base: Optional[dict] = None) -> dict:
    """The child's environment: ``base`` (default ``os.environ``) with this package importable first."""
    env = dict(os.environ if base is None else base)
    parent = str(PACKAGE_DIR.parent)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != parent]
    env["PYTHONPATH"] = os.pathsep.join([parent] + rest)
    env["PYTHONUNBUFFERED"] = "1"  # events must arrive as they happen
    return env


def describeExit(returncode: Optional[int]) -> str:
    """'exit code 3' or 'signal SIGKILL' for a ``Popen.returncode``."""
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class WorkerProcess:
    """One worker run. ``start()``, then ``poll()`` until ``finished``; ``cancel()`` to stop it.

    Args:
        requestPath: The request JSON for the worker (see :mod:`..engine.worker`).
        workDir: A folder owned by this run (request, input and outputs); removed by :meth:`cleanup`.
        python: Interpreter (default :func:`workerInterpreter`).
        env: Environment base (default ``os.environ``).

    Attributes:
        result: The ``done`` event once it arrived.
        error: The sentence of the ``error`` event (the worker's own, or one about the process dying).
        errorEvent: The worker's own ``error`` event (its ``kind``, and ``reasons`` for a scope
            refusal), or ``None``.
        cancelled: :meth:`cancel` was called.
    """

    def __init__(self, requestPath, workDir, python: Optional[str] = None, env: Optional[dict] = None):
        self.requestPath = Path(requestPath)
        self.workDir = Path(workDir)
        self.python = python or workerInterpreter()
        self.env = childEnvironment(env)
        self.process: Optional[subprocess.Popen] = None
        self.result: Optional[dict] = None
        self.error: Optional[str] = None
        self.errorEvent: Optional[dict] = None
        self.cancelled = False
        self._events: queue.Queue = queue.Queue()
        self._stderr = collections.deque(maxlen=STDERR_LINES)
        self._readers: list = []
        self._ended = False

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Launch the child; its events arrive through :meth:`poll`."""
        self.process = subprocess.Popen(
            [self.python, "-m", WORKER_MODULE, str(self.requestPath)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
            cwd=str(self.workDir), text=True, encoding="utf-8", errors="replace", bufsize=1)
        self._readers = [threading.Thread(target=self._readStdout, daemon=True, name="MnetImSegment worker stdout"),
                         threading.Thread(target=self._readStderr, daemon=True, name="MnetImSegment worker stderr")]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    @property
    def finished(self) -> bool:
        """The child has ended and every event was handed out by :meth:`poll`."""
        return self._ended

    def poll(self) -> list:
        """Events received since the last call (never blocks); a final ``error`` if the child died silently."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        for event in out:
            self._note(event)
        if not self._ended and self.process is not None and self.process.poll() is not None:
            # The child has exited: once the readers have drained its pipes, the stream is complete.
            for reader in self._readers:
                reader.join(timeout=1.0)
            while True:
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    break
                self._note(event)
                out.append(event)
            if self.result is None and self.error is None:
                event = {"event": "error", "message": self._deathSentence()}
                self._note(event)
                out.append(event)
            self._ended = True
        return out

    def wait(self, timeout: float = 600.0, interval: float = 0.05) -> list:
        """Poll until the child ends (scripts and tests); return every event."""
        deadline = time.monotonic() + timeout
        events = []
        while not self._ended:
            if time.monotonic() > deadline:
                self.cancel()
                events += self.poll()
                raise TimeoutError(f"The segmentation process did not finish within {timeout:g} s.")
            events += self.poll()
            time.sleep(interval)
        return events

    def cancel(self, grace: float = 3.0) -> None:
        """Stop the child: terminate, then kill if it is still running after ``grace`` seconds."""
        self.cancelled = True
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)

    def cleanup(self) -> None:
        """Stop the child if needed and remove the run's folder (input copy, request, outputs)."""
        if self.process is not None and self.process.poll() is None:
            self.cancel()
        for reader in self._readers:
            reader.join(timeout=1.0)
        for stream in (getattr(self.process, "stdout", None), getattr(self.process, "stderr", None)):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.workDir, ignore_errors=True)

    # ------------------------------------------------------------------ internals
    def _note(self, event: dict) -> None:
        if event.get("event") == "done":
            self.result = event
        elif event.get("event") == "error" and self.error is None:
            self.error = str(event.get("message", "The segmentation process failed."))
            self.errorEvent = event

    def _deathSentence(self) -> str:
        code = self.process.returncode if self.process is not None else None
        if self.cancelled:
            return "Segmentation cancelled; the scene was not changed."
        last = next((line for line in reversed(self._stderr) if line.strip()), "")
        tail = f"; its last message: {last.strip()[:200]}" if last else ""
        return (f"The segmentation process ended unexpectedly ({describeExit(code)}){tail}. "
                "The scene was not changed.")

    def _readStdout(self) -> None:
        for line in self.process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict) or "event" not in event:
                event = {"event": "log", "message": line}
            self._events.put(event)

    def _readStderr(self) -> None:
        for line in self.process.stderr:
            self._stderr.append(line.rstrip("\n"))
