"""The one way every writer puts a result on disk: a transaction that commits all or nothing.

A writer never writes a final path. It asks an :class:`OutputTransaction` for a temporary path in
the *target folder* (same file system, so the final step is a link or a rename, never a copy),
writes there, and registers read-back checks. :meth:`OutputTransaction.commit` then

1. flushes every temporary file to the disk (``fsync``) and its folder;
2. runs every read-back check on the temporary files (a writer library that ignores a full disk
   -- ITK's NIfTI writer does -- is caught here, not by the user);
3. creates every final path *without replacing* anything: ``os.link(temp, final)`` fails if
   ``final`` exists, so two concurrent runs cannot both win; where hard links are unsupported, an
   ``O_EXCL`` placeholder claims the name first. With ``overwrite`` the old file is kept as a
   hidden backup until every output is in place, so a failure restores it;
4. if any step fails, removes what it created (finals of this transaction, temporary files) and
   raises one sentence (:class:`~.errors.OutputError`) naming the path and the reason.

Temporary names start with :data:`TEMP_PREFIX` and carry a host tag and the process id, so a
temporary file left by a killed process (SIGKILL cannot be caught) is recognised and removed by
the next transaction that writes into that folder, while files of live processes are left alone.
SIGINT, SIGTERM and SIGHUP remove the temporary files of every open transaction, then behave as
they would have without us (``KeyboardInterrupt`` for SIGINT, termination for the others).

Directories (DICOM export folders, dataset trees) are committed the same way: a temporary folder,
renamed into place when complete.

This module imports nothing from the package but :mod:`.errors`: it is the bottom of the stack.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from .errors import InputError, OutputError

PathLike = Union[str, os.PathLike]
Check = Callable[[Path], object]

TEMP_PREFIX = ".mnetim-tmp-"
_HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
# .mnetim-tmp-<host>-<pid>-<token>[-old]-<name of the final path>
_TEMP_RE = re.compile(r"^\.mnetim-tmp-([0-9a-f]{6})-(\d+)-([0-9a-z]{8})(-old)?-")
_NAME_MAX_DEFAULT = 255
# A temporary file left by a process whose liveness cannot be checked (Windows) is stale after a day.
_STALE_AGE_S = 24 * 3600
# Free space below which a failed write is explained as "the disk is full".
_FULL_DISK_BYTES = 1 << 20
# Errors of os.link that mean "this file system has no hard links", not "you may not".
_NO_LINK_ERRNOS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK}
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


# --------------------------------------------------------------------------- one-sentence OS errors
_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.ENOENT: "the folder does not exist",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "it is a folder",
    errno.EEXIST: "it already exists; choose another output or pass --overwrite",
    errno.ENOTEMPTY: "it already exists; choose another output or pass --overwrite",
    errno.EIO: "an input/output error occurred (failing disk or network share)",
    errno.EMFILE: "too many files are open",
    errno.ENFILE: "too many files are open",
    errno.EFBIG: "the file is too large for this file system",
    errno.ELOOP: "the path has too many symbolic links",
    errno.ETXTBSY: "the file is in use",
}


def os_error_reason(exc: OSError) -> str:
    """A short human reason for an OS error (no errno numbers, no C names)."""
    if isinstance(exc, FileExistsError):
        return _REASONS[errno.EEXIST]
    reason = _REASONS.get(exc.errno or -1)
    if reason:
        return reason
    return (exc.strerror or str(exc) or type(exc).__name__).rstrip(".").lower()


def output_error(path: PathLike, exc: OSError, action: str = "write") -> OutputError:
    """``OSError`` -> one sentence naming the path and the reason, with nothing written."""
    return OutputError(f"Cannot {action} '{path}': {os_error_reason(exc)}; nothing was written.")


def input_error(path: PathLike, exc: OSError) -> InputError:
    """``OSError`` while reading an input -> one sentence naming the path and the reason."""
    return InputError(f"Cannot read '{path}': {os_error_reason(exc)}.")


# --------------------------------------------------------------------------- small OS helpers
def current_umask() -> int:
    """The process umask, read without changing it where possible (``os.umask`` is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


def _fsync_path(path: Path, directory: bool = False) -> None:
    """Flush a file's (or folder's) data and metadata to the device; folders where the OS allows."""
    if directory and os.name == "nt":
        return  # Windows cannot open a folder for fsync; NTFS journals the rename itself
    flags = os.O_RDONLY if (directory or os.name != "nt") else os.O_RDWR
    fd = os.open(path, flags | getattr(os, "O_DIRECTORY", 0) * directory)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems (and all folders on some OSes) refuse fsync on a folder: not a failure.
        if not (directory and exc.errno in (errno.EINVAL, errno.EBADF, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            p = Path(folder) / name
            if p.is_file() and not p.is_symlink():
                _fsync_path(p)
        _fsync_path(Path(folder), directory=True)


def _remove(path: Path) -> None:
    """Remove a file or folder tree; missing is fine (cleanup must never raise)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        pass


def _inode(path: Path) -> Optional[tuple[int, int]]:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill(pid, 0) would terminate it on Windows; age decides there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except OSError:
        return True
    return True


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return _NAME_MAX_DEFAULT


def disk_full_hint(folder: Path) -> str:
    """' (the disk holding FOLDER is full)' when almost no space is left there, else ''."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return ""
    if st.f_bavail * st.f_frsize < _FULL_DISK_BYTES:
        return f" (the disk holding '{folder}' is full)"
    return ""


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of this module's temporary (or backup) names."""
    return _TEMP_RE.match(name) is not None


def clean_stale_temps(folder: PathLike) -> list[Path]:
    """Remove temporary files left in ``folder`` by dead processes of this host; return them.

    A name belongs to a dead process when its pid no longer exists (POSIX) or it is older than a
    day (Windows, where liveness is not checked). Files of live processes stay. A name carrying
    this process's own pid (a container restarts with the same pid) is stale unless an open
    transaction of this process holds it.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if not m or m.group(1) != _HOST_TAG:
            continue  # not ours, or another host's on a shared folder: its pids mean nothing here
        path = Path(entry.path)
        pid = int(m.group(2))
        if pid == os.getpid():
            if _is_open_temp(path):
                continue
        elif os.name == "nt":
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime < _STALE_AGE_S:
                    continue
            except OSError:
                continue
        elif _pid_alive(pid):
            continue
        _remove(path)
        removed.append(path)
    return removed


# --------------------------------------------------------------------------- signals
_REGISTRY = threading.RLock()
_OPEN: "set[OutputTransaction]" = set()
_PREVIOUS: dict[int, object] = {}
_GUARD_DEPTH = 0


def _is_open_temp(path: Path) -> bool:
    with _REGISTRY:
        return any(path in tx._temps() for tx in _OPEN)


def _on_signal(signum, frame):
    """Remove every open transaction's temporary files, then do what the signal did before us."""
    with _REGISTRY:
        open_now = list(_OPEN)
    for tx in open_now:
        tx._abort(reason="interrupted", timeout=5.0)
    previous = _PREVIOUS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)  # Python's SIGINT default raises KeyboardInterrupt here
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # terminate as the signal's default would (exit status 128+n)
    # SIG_IGN: never installed for (see _install), so nothing to do.


def _install() -> bool:
    """Install the handlers (main thread only); nested installs share one set. True if counted."""
    global _GUARD_DEPTH
    if threading.current_thread() is not threading.main_thread():
        return False
    with _REGISTRY:
        if _GUARD_DEPTH == 0:
            _PREVIOUS.clear()
            for sig in _SIGNALS:
                previous = signal.getsignal(sig)
                if previous == signal.SIG_IGN or previous is None:
                    continue  # ignored before (nohup): keep ignoring; None: set from C, leave it
                _PREVIOUS[sig] = previous
                signal.signal(sig, _on_signal)
        _GUARD_DEPTH += 1
    return True


def _uninstall() -> None:
    global _GUARD_DEPTH
    with _REGISTRY:
        _GUARD_DEPTH -= 1
        if _GUARD_DEPTH == 0:
            for sig, previous in _PREVIOUS.items():
                if signal.getsignal(sig) is _on_signal:
                    signal.signal(sig, previous)
            _PREVIOUS.clear()


@contextmanager
def signal_cleanup():
    """Keep the cleanup handlers installed for a whole block (e.g. a batch whose transactions run
    in worker threads, where handlers cannot be installed). A no-op outside the main thread."""
    counted = _install()
    try:
        yield
    finally:
        if counted:
            _uninstall()


# --------------------------------------------------------------------------- the transaction
class _Entry:
    """One output: its final path, temporary path, kind and checks, and what commit did to it."""

    def __init__(self, final: Path, temp: Path, is_dir: bool):
        self.final = final
        self.temp = temp
        self.is_dir = is_dir
        self.checks: list[Check] = []
        self.inode: Optional[tuple[int, int]] = None  # the temp's (dev, ino): proves a final is ours
        self.backup: Optional[Path] = None  # the replaced old final (overwrite), until commit ends
        self.moved = False  # the temporary was renamed onto the final: no temporary name left


class OutputTransaction:
    """Write several outputs of one run; commit all of them or none.

    Example::

        with OutputTransaction(overwrite=args.overwrite) as tx:
            tmp = tx.path_for(out)
            sitk.WriteImage(image, str(tmp))
            tx.verify(out, lambda p: p.stat().st_size > 0)
        # committed here; an exception inside the block removes every temporary file

    Args:
        overwrite: Replace existing final paths (``os.replace``) instead of refusing them.
    """

    def __init__(self, overwrite: bool = False):
        self.overwrite = bool(overwrite)
        self._entries: dict[Path, _Entry] = {}
        self._cleaned: set[Path] = set()
        self._lock = threading.RLock()
        self._state = "new"  # new -> open -> committed | aborted
        self._abort_reason = ""
        self._signals = False
        self._umask = current_umask()

    # -- context manager
    def __enter__(self) -> "OutputTransaction":
        with _REGISTRY:
            _OPEN.add(self)
        self._signals = _install()
        self._state = "open"
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self._check_not_aborted()  # a signal aborted it while the block ran (another thread)
                if self._state == "open":
                    self.commit()
                return False
            self._abort(reason="failed")
            if isinstance(exc, OSError) and not isinstance(exc, OutputError):
                paths = ", ".join(f"'{e.final}'" for e in self._entries.values()) or "the output"
                raise OutputError(f"Writing {paths} failed: {os_error_reason(exc)}; nothing was written.") from None
            return False
        finally:
            self._close()

    def _close(self) -> None:
        with _REGISTRY:
            _OPEN.discard(self)
        if self._signals:
            self._signals = False
            _uninstall()

    # -- planning
    def _final(self, final_path: PathLike) -> Path:
        final = Path(os.path.abspath(final_path))
        if final in self._entries:
            raise OutputError(f"Two outputs of this run are the same file '{final_path}'; choose distinct outputs.")
        folder = final.parent
        if not folder.is_dir():
            raise OutputError(f"The output folder '{folder}' does not exist.")
        if len(os.fsencode(final.name)) > _name_max(folder):
            raise OutputError(f"Cannot write '{final_path}': the file name is too long; nothing was written.")
        if not self.overwrite and os.path.lexists(final):
            raise OutputError(f"'{final_path}' already exists; choose another output or pass --overwrite.")
        if folder not in self._cleaned:
            clean_stale_temps(folder)
            self._cleaned.add(folder)
        return final

    def _temp_name(self, final: Path, old: bool = False) -> Path:
        head = f"{TEMP_PREFIX}{_HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}{'-old' if old else ''}-"
        # Keep the end of the final name: writers pick the format from the suffix (.nii.gz, .seg.nrrd).
        room = _name_max(final.parent) - len(head.encode())
        tail = final.name
        while len(tail.encode()) > room:
            tail = tail[1:]
        return final.parent / (head + tail)

    def _require_open(self) -> None:
        if self._state != "open":
            raise OutputError(f"This output transaction is {self._state}; nothing more can be written.")

    def path_for(self, final_path: PathLike) -> Path:
        """A new, empty temporary file next to ``final_path`` (same suffix) for a writer to fill."""
        with self._lock:
            self._require_open()
            final = self._final(final_path)
            if self.overwrite and final.is_dir() and not final.is_symlink():
                raise OutputError(f"Cannot write '{final_path}': it is a folder; nothing was written.")
            temp = self._temp_name(final)
            self._entries[final] = _Entry(final, temp, is_dir=False)
            try:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
                os.close(fd)
            except OSError as exc:
                del self._entries[final]
                raise output_error(final_path, exc) from None
            return temp

    def dir_for(self, final_dir: PathLike) -> Path:
        """A new, empty temporary folder next to ``final_dir`` for a writer to fill."""
        with self._lock:
            self._require_open()
            final = self._final(final_dir)
            if self.overwrite and os.path.lexists(final) and not final.is_dir():
                raise OutputError(f"Cannot write the folder '{final_dir}': a file of that name exists; nothing was written.")
            temp = self._temp_name(final)
            self._entries[final] = _Entry(final, temp, is_dir=True)
            try:
                os.mkdir(temp, 0o777)
            except OSError as exc:
                del self._entries[final]
                raise output_error(final_dir, exc) from None
            return temp

    def verify(self, final_path: PathLike, check: Check) -> None:
        """Register a read-back check, run on the temporary path at commit.

        ``check(temp_path)`` passes by returning ``None`` or ``True``; it fails by returning
        ``False`` or a reason string, or by raising (its message becomes the reason).
        """
        final = Path(os.path.abspath(final_path))
        with self._lock:
            if final not in self._entries:
                raise KeyError(f"{final_path} is not an output of this transaction")
            self._entries[final].checks.append(check)

    def _temps(self) -> set[Path]:
        # Called from other threads' stale-temp scans without our lock (a lock here could deadlock
        # against _REGISTRY): tuple() copies the dict's values atomically under the GIL.
        entries = tuple(self._entries.values())
        return {e.temp for e in entries} | {e.backup for e in entries if e.backup}

    @property
    def finals(self) -> list[Path]:
        return [e.final for e in self._entries.values()]

    @property
    def state(self) -> str:
        return self._state

    # -- commit
    def commit(self) -> list[Path]:
        """Flush, verify and place every output; all or none. Returns the final paths."""
        with self._lock:
            self._require_open()
            entries = list(self._entries.values())
            current = None
            try:
                for e in entries:
                    current = e
                    _flush_entry(e)
                for folder in {e.final.parent for e in entries}:
                    _fsync_path(folder, directory=True)
                for e in entries:
                    current = e
                    self._run_checks(e)
                for e in entries:
                    current = e
                    self._set_mode(e)
                for e in entries:
                    current = e
                    self._check_not_aborted()
                    self._place(e)
                    self._check_not_aborted()
                for folder in {e.final.parent for e in entries}:
                    _fsync_path(folder, directory=True)
            except OutputError:
                self._abort(reason="failed")
                raise
            except OSError as exc:
                hint = disk_full_hint(current.final.parent) if current else ""
                self._abort(reason="failed")
                where = current.final if current else "the output"
                if isinstance(exc, FileExistsError) or exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise OutputError(f"'{where}' already exists (another run wrote it meanwhile); choose another "
                                      "output or pass --overwrite; nothing was written.") from None
                raise OutputError(f"Cannot write '{where}': {os_error_reason(exc)}{hint}; nothing was written.") from None
            except BaseException:
                self._abort(reason="interrupted")
                raise
            # Every final is in place: temporary names and backups go now.
            for e in entries:
                if not e.moved:
                    _remove(e.temp)  # a hard link: the final keeps the data
                if e.backup is not None:
                    _remove(e.backup)
                    e.backup = None
            self._state = "committed"
            with _REGISTRY:
                _OPEN.discard(self)
            return [e.final for e in entries]

    def _check_not_aborted(self) -> None:
        if self._state == "aborted":
            names = ", ".join(f"'{p}'" for p in self.finals)
            raise OutputError(f"Writing {names} was {self._abort_reason}; "
                              "nothing was written.")

    def _run_checks(self, e: _Entry) -> None:
        if not e.is_dir:
            try:
                size = os.stat(e.temp).st_size
            except OSError as exc:
                raise output_error(e.final, exc) from None
            if size == 0 and not e.checks:
                raise OutputError(f"Writing '{e.final}' failed: the file is empty{disk_full_hint(e.final.parent)}; "
                                  "nothing was written.")
        for check in e.checks:
            try:
                verdict = check(e.temp)
                reason = None if verdict is None or verdict is True else (verdict or "the check failed")
            except Exception as exc:  # a check failing in any way means the file is not what was written
                reason = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__
            if reason:
                reason = str(reason).rstrip(".")
                raise OutputError(f"Writing '{e.final}' failed: the file read back is wrong ({reason})"
                                  f"{disk_full_hint(e.final.parent)}; nothing was written.")

    def _set_mode(self, e: _Entry) -> None:
        # Writers (or mkstemp-style helpers) may create 0600 files; results are shared like any file.
        mode = (0o777 if e.is_dir else 0o666) & ~self._umask
        os.chmod(e.temp, mode)

    def _place(self, e: _Entry) -> None:
        e.inode = _inode(e.temp)
        if self.overwrite and os.path.lexists(e.final):
            self._keep_backup(e)
        if e.is_dir:
            self._place_dir(e)
        else:
            self._place_file(e)

    def _keep_backup(self, e: _Entry) -> None:
        """Keep the final about to be replaced under a hidden name, so a rollback can restore it."""
        backup = self._temp_name(e.final, old=True)
        e.backup = backup  # recorded first: a signal right after the link must still restore it
        try:
            if e.is_dir:
                os.rename(e.final, backup)
            else:
                os.link(e.final, backup, follow_symlinks=False)
        except OSError as exc:
            e.backup = None
            if e.is_dir or exc.errno not in _NO_LINK_ERRNOS:
                raise
            # No hard links: the old file is replaced without a backup (all-or-none weakened).

    def _place_file(self, e: _Entry) -> None:
        if self.overwrite:
            os.replace(e.temp, e.final)
            e.moved = True
            return
        try:
            os.link(e.temp, e.final)  # fails if the final exists: create-without-replace
            return
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno not in _NO_LINK_ERRNOS:
                raise
        # No hard links here (FAT, some shares): claim the name exclusively, then move onto it.
        fd = os.open(e.final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        claim = _inode(e.final)
        try:
            os.replace(e.temp, e.final)
        except OSError:
            if _inode(e.final) == claim:
                _remove(e.final)
            raise
        e.moved = True

    def _place_dir(self, e: _Entry) -> None:
        if os.path.lexists(e.final):  # not overwriting (a backup moved it away otherwise)
            raise FileExistsError(errno.EEXIST, "exists", str(e.final))
        # mkdir claims the name atomically; renaming a folder onto an EMPTY folder replaces it.
        os.mkdir(e.final, 0o700)
        claim = _inode(e.final)
        try:
            os.rename(e.temp, e.final)
        except OSError:
            if _inode(e.final) == claim:
                os.rmdir(e.final)
            if os.name != "nt":
                raise
            os.rename(e.temp, e.final)  # Windows cannot rename onto a folder: a short window instead
        e.moved = True

    # -- abort
    def abort(self) -> None:
        """Remove everything this transaction wrote (temporary files, finals placed so far)."""
        self._abort(reason="cancelled")

    def _abort(self, reason: str, timeout: float = -1) -> None:
        # A signal handler waits at most ``timeout`` s for a worker thread's commit to finish: the
        # main thread may have been interrupted while holding _REGISTRY, which that worker may
        # need, so waiting forever could deadlock. Past it, the cleanup runs anyway (best effort:
        # the process is going down).
        locked = self._lock.acquire(timeout=timeout)
        try:
            if self._state in ("committed", "aborted"):
                return
            self._state = "aborted"
            self._abort_reason = reason
            for e in reversed(tuple(self._entries.values())):
                self._rollback(e)
            with _REGISTRY:
                _OPEN.discard(self)
        finally:
            if locked:
                self._lock.release()

    def _rollback(self, e: _Entry) -> None:
        if e.inode is not None and _inode(e.final) == e.inode:
            _remove(e.final)  # ours (the inode of our temporary): never someone else's file
        if e.backup is not None:
            if not e.is_dir and _inode(e.final) == _inode(e.backup):
                _remove(e.backup)  # the old file was never replaced: the backup is a spare link
            else:
                try:
                    os.rename(e.backup, e.final) if e.is_dir else os.replace(e.backup, e.final)
                except OSError:
                    pass
            e.backup = None
        if not e.moved:
            _remove(e.temp)


# --------------------------------------------------------------------------- ready-made checks
def check_min_size(n_bytes: int = 1) -> Check:
    """A check: the file holds at least ``n_bytes``."""
    def check(path: Path):
        size = os.stat(path).st_size
        return None if size >= n_bytes else f"{size} bytes, expected at least {n_bytes}"
    return check


def check_sha256(hexdigest: str) -> Check:
    """A check: the file's SHA-256 equals what the writer computed while writing."""
    def check(path: Path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return None if h.hexdigest() == hexdigest else "its checksum differs from the data written"
    return check


def check_tree_sha256(hashes: dict) -> Check:
    """A check for a folder output: exactly these files (relative names), each with its SHA-256."""
    def check(folder: Path):
        present = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
        if present != sorted(hashes):
            return f"it holds {len(present)} files, {len(hashes)} were written"
        for name, digest in hashes.items():
            problem = check_sha256(digest)(Path(folder) / name)
            if problem:
                return f"{name}: {problem}"
        return None
    return check


# --------------------------------------------------------------------------- outputs vs inputs
def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _real(a) == _real(b)


def _inside(child: Path, parent: Path) -> bool:
    child, parent = _real(child), _real(parent)
    return child != parent and parent in child.parents


def refuse_output_equals_input(outputs: Iterable[PathLike], inputs: Iterable[PathLike]) -> None:
    """Refuse, before any work, an output that is an input or lies inside an input folder.

    Symbolic links are resolved and hard links compared by inode (``os.path.samefile``), so
    ``-o ct_link.nii.gz`` cannot replace the CT it links to, and a file inside an input folder
    (a DICOM series) is refused whether named directly or through a link. An input inside an
    output *folder* is refused too (replacing that folder would delete the input).

    Raises:
        OutputError: one sentence naming the output and the input.
    """
    outs = [Path(p) for p in outputs if p is not None]
    ins = [Path(p) for p in inputs if p is not None]
    for out in outs:
        for inp in ins:
            if _same_file(out, inp):
                raise OutputError(f"The output '{out}' is the input '{inp}'; choose another output (the input is never replaced).")
            if _inside(out, inp):
                raise OutputError(f"The output '{out}' lies inside the input folder '{inp}'; choose an output outside it.")
            if os.path.isdir(out) and _inside(inp, out):
                raise OutputError(f"The output folder '{out}' holds the input '{inp}'; choose another output folder.")
            if inp.is_dir() and os.path.isfile(out) and _inode_in_tree(out, inp):
                raise OutputError(f"The output '{out}' is a link to a file of the input folder '{inp}'; choose another output.")


def _inode_in_tree(path: Path, root: Path, limit: int = 100_000) -> bool:
    target = _inode(path)
    if target is None:
        return False
    seen = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            seen += 1
            if seen > limit:
                return False
            if _inode(Path(folder) / name) == target:
                return True
    return False


_KNOWN_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def strip_suffix(name: str, suffixes: Iterable[str]) -> Optional[str]:
    """``name`` without the first of ``suffixes`` it ends with (case-insensitive; never empty), else None."""
    lower = name.lower()
    for s in suffixes:
        if lower.endswith(s) and len(name) > len(s):
            return name[: -len(s)]
    return None


def output_stem(path: PathLike) -> str:
    """The part of an input's name that names its output: suffixes of image formats removed."""
    name = Path(path).name
    stem = strip_suffix(name, _KNOWN_SUFFIXES)
    return name if stem is None else stem


def batch_name_collisions(inputs: Iterable[PathLike], stem: Callable[[Path], str] = output_stem) -> dict[str, list[Path]]:
    """Inputs of a batch that would write the same output name: ``{stem: [inputs...]}``.

    Names are compared case-insensitively (``Patient.nii`` and ``patient.nrrd`` collide on macOS
    and Windows file systems, and a batch must give the same answer everywhere). Empty when the
    batch is safe.
    """
    groups: dict[str, list[Path]] = {}
    for p in inputs:
        p = Path(p)
        groups.setdefault(stem(p).casefold(), []).append(p)
    return {k: v for k, v in groups.items() if len(v) > 1}


def _flush_entry(e: _Entry) -> None:
    if e.is_dir:
        _fsync_tree(e.temp)
    else:
        if not e.temp.is_file() or e.temp.is_symlink():
            raise OutputError(f"Writing '{e.final}' failed: the writer left no regular file; nothing was written.")
        _fsync_path(e.temp)


__all__ = ["OutputTransaction", "TEMP_PREFIX", "batch_name_collisions", "check_min_size", "check_sha256", "check_tree_sha256",
           "clean_stale_temps", "current_umask", "disk_full_hint", "input_error", "is_temp_name", "os_error_reason",
           "output_error", "output_stem", "refuse_output_equals_input", "signal_cleanup"]
