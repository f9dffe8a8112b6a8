"""One writer per run folder: train.py and evaluate.py hold `out_dir/<run>/.lock` while they run.

A second train.py (with or without --resume) or evaluate.py on a run being written stops at once
with an error naming the holder (pid, host, start time, command), instead of writing the same
checkpoint, adapter or results beside it. Evaluation takes the same lock as training: evaluating a
run while it trains would read a half-written adapter.

The lock is `fcntl.flock` on the file, kept open for the holder's life: the kernel frees it when
the process ends, however it ends (SIGKILL included), so a killed run never blocks its --resume.
The file holds the holder's record (JSON: pid, host, start time, command, and a heartbeat time
rewritten in place, in one write, every HEARTBEAT_S seconds); a clean release empties it. The record
names the holder in the message, and covers shared file systems where flock alone falls short:
- flock granted, but the record is another host's with a fresh heartbeat: the file system does not
  share flock between nodes (Lustre `localflock`, BeeGFS without `tuneUseGlobalFileLocks`, NFS
  mounted `nolock` or `local_lock=flock|all`), so the record decides: refused.
- flock held, and the record is another host's whose heartbeat is older than STALE_S: that node is
  presumed lost while the file server keeps its lock (NFSv3 keeps a lost client's locks until it
  reboots). The file is moved aside to `.lock.stale-<host>-<pid>` and a new one taken, with a
  warning.
- flock unsupported (Lustre mounted without `flock`: ENOSYS): the record alone decides, a warning
  says so.
Limits: across hosts the heartbeats are compared with this host's clock (keep clocks in sync);
a holder silent for STALE_S (a job suspended that long, a file server stalled that long) counts as
lost; two processes breaking the same lost node's lock in the same millisecond could both go on.
"""
import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
# A holder on another host silent this long is presumed lost: 4 missed heartbeats, and twice NFS's
# attribute caching (up to 60 s), so a live holder is not taken for lost; short enough that a job
# requeued after a lost node (SLURM first waits SlurmdTimeout, 300 s by default) finds it stale.
STALE_S = 120.0
HOST = socket.gethostname()


class RunBusy(OSError):
    """Another process holds the run folder. An OSError, so the scripts print it as `error: ...`."""


class RunLock:
    """A held lock: the open file (its flock), the holder's record, and the heartbeat thread."""

    def __init__(self, path, fd, heartbeat_s):
        self.path, self._fd = path, fd
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        self.record = dict(pid=os.getpid(), host=HOST, started=started, command=" ".join(sys.argv),
                           heartbeat=time.time())
        self._write()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), name="runlock-heartbeat", daemon=True)
        self._thread.start()

    def _write(self):
        # One pwrite that covers the whole file: a shorter record is padded with spaces (JSON allows
        # trailing whitespace) rather than cut with ftruncate afterwards, which left a reader between the
        # two calls a record with the old one's tail ("...}}"), and an empty file if done the other way.
        data = json.dumps(self.record).encode()
        data = data.ljust(os.fstat(self._fd).st_size, b" ")
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)  # other nodes read the file server's copy, not this node's page cache

    def _beat(self, every):
        while not self._stop.wait(every):
            self.record["heartbeat"] = time.time()
            try:
                self._write()
            except OSError:  # a full disk or a file server hiccup must not stop training; the next beat retries
                pass

    def release(self):
        """Empty the record (a clean end leaves nothing for the next process to judge) and free the lock."""
        if self._fd is None:
            return
        self._stop.set()
        self._thread.join()
        try:
            os.ftruncate(self._fd, 0)
        finally:
            os.close(self._fd)  # closing the only descriptor frees the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _flock(fd):
    """True: this process now holds the flock; False: another does; None: the file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP):
            return None
        raise


def _read(fd):
    """The holder's record; {} for an empty file (released cleanly, or never written); None when unreadable."""
    for _ in range(3):  # the holder may be rewriting its heartbeat at this instant
        data = os.pread(fd, max(os.fstat(fd).st_size, 1), 0)
        if not data:
            return {}
        try:
            record = json.loads(data)
            if (isinstance(record.get("pid"), int) and isinstance(record.get("host"), str)
                    and isinstance(record.get("heartbeat"), (int, float))):
                return record
        except (ValueError, AttributeError):
            pass
        time.sleep(0.05)
    return None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _holder_text(record, age):
    if not record:
        return "another process (its record is not written yet, or unreadable)"
    return (f"pid {record['pid']} on host {record['host']}, started {record.get('started', '?')}, running "
            f"`{record.get('command', '?')}` (last heartbeat {age:.0f} s ago)")


def acquire(run_dir, heartbeat_s=HEARTBEAT_S, stale_s=STALE_S) -> RunLock:
    """Take the run folder's lock or raise RunBusy naming its holder (the module docstring has the rules).

    Args:
        run_dir: the run's folder; made if missing.
        heartbeat_s: seconds between heartbeats.
        stale_s: after this long without a heartbeat, a holder on another host is presumed lost.
    """
    path = Path(run_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(2):  # the second only after moving a lost node's lock file aside
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes (PEP 446)
        try:
            got = _flock(fd)
            record = _read(fd)
            age = time.time() - record["heartbeat"] if record else 0.0
            elsewhere = bool(record) and record["host"] != HOST
            if got is False and elsewhere and age > stale_s and attempt == 0:
                aside = path.with_name(f"{LOCK_NAME}.stale-{record['host']}-{record['pid']}")
                if os.stat(path).st_ino == os.fstat(fd).st_ino:  # still the file judged, not a newer holder's
                    os.replace(path, aside)
                print(f"warning: {path} is held by {_holder_text(record, age)}: silent for over {stale_s:.0f} s, its "
                      f"node is presumed lost; moved its lock to {aside} and taking the run over", file=sys.stderr)
                os.close(fd)
                continue
            if got is None:
                print(f"warning: the file system of {path} has no flock; only the holder's record guards the run",
                      file=sys.stderr)
            # on one host flock is authoritative: a record left behind with the lock free is a killed process's
            fresh = bool(record) and age < stale_s
            busy = got is False or (fresh and (elsewhere or (got is None and _pid_alive(record["pid"]))))
            if busy:
                why = ""
                if got is not False and elsewhere:
                    why = "; this file system did not share the lock between hosts, so the record decides"
                if elsewhere:
                    why += (f"; if {record['host']} is lost, the lock counts as stale {stale_s - age:.0f} s from now "
                            f"and a new run takes it over")
                raise RunBusy(f"run folder {path.parent} is in use by {_holder_text(record, age)}{why}. One process "
                              f"writes a run at a time: wait for it to end, or stop it")
            if record:
                print(f"note: {path}: the previous holder, {_holder_text(record, age)}, ended without releasing it "
                      f"(killed, or its node lost); taking the run over", file=sys.stderr)
            return RunLock(path, fd, heartbeat_s)
        except BaseException:
            os.close(fd)
            raise


def lock_run(run_dir):
    """The run's lock for train.py / evaluate.py, as a context manager. Under torchrun only rank 0
    writes, so only rank 0 takes it; it tells every rank whether it could, so that all ranks stop
    together rather than wait for rank 0 in a collective. Call after init_distributed."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return acquire(run_dir)
    lock, error = None, None
    if dist.get_rank() == 0:
        try:
            lock = acquire(run_dir)
        except OSError as e:
            error = e
    message = [None if error is None else str(error)]
    dist.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:  # ranks other than 0: rank 0's reason, so every rank's error says it
        raise OSError(message[0])
    return lock or contextlib.nullcontext()  # other ranks: rank 0 holds the lock for the whole job
