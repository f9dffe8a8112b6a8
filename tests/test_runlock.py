"""One writer per run folder (runlock.py), with real processes: a holder is a helper process that
takes the lock through runlock.acquire (it starts in a fraction of a second: no torch) or a real
train.py; the second writer is train.py, train.py --resume, evaluate.py, or 2 ranks in torchrun's environment.
The shared-file-system rules are checked by writing the records another host would leave."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import runlock
from conftest import ROOT
from test_pipeline import runs_file, script

HOLD = "import runlock, sys, time; runlock.acquire(sys.argv[1]); print('held', flush=True); time.sleep(600)"


@pytest.fixture
def holder():
    """A function starting a process that holds a folder's lock until killed (each killed at the end)."""
    procs = []
    def start(run_dir):
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline() == "held\n", proc.communicate()[1]
        return proc
    yield start
    for proc in procs:
        proc.kill()
        proc.communicate()


def kill(proc):
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def record(run_dir):
    text = (run_dir / ".lock").read_text()
    return json.loads(text) if text else {}


def test_second_holder_is_refused_naming_the_first_and_a_sigkill_frees_it(tmp_path, holder, capsys):
    first = holder(tmp_path)
    with pytest.raises(runlock.RunBusy) as e:
        runlock.acquire(tmp_path)
    message = str(e.value)
    assert f"in use by pid {first.pid} on host {runlock.HOST}, started 20" in message
    assert f"running `-c {tmp_path}`" in message and "wait for it to end" in message
    kill(first)  # no chance to release: the kernel frees the flock, the record stays behind
    assert record(tmp_path)["pid"] == first.pid
    with runlock.acquire(tmp_path) as lock:
        assert record(tmp_path)["pid"] == os.getpid() == lock.record["pid"]
        assert f"previous holder, pid {first.pid}" in capsys.readouterr().err
        with pytest.raises(runlock.RunBusy, match=f"in use by pid {os.getpid()} "):  # one process, twice: refused too
            runlock.acquire(tmp_path)
    assert record(tmp_path) == {}  # a clean release leaves an empty record
    runlock.acquire(tmp_path).release()
    assert "previous holder" not in capsys.readouterr().err


def test_heartbeat_is_rewritten_while_held(tmp_path):
    with runlock.acquire(tmp_path, heartbeat_s=0.05) as lock:
        first = record(tmp_path)["heartbeat"]
        deadline = time.time() + 5
        while record(tmp_path)["heartbeat"] == first:
            assert time.time() < deadline, "no heartbeat in 5 s"
            time.sleep(0.05)
        assert record(tmp_path)["started"] == lock.record["started"]


def test_every_write_leaves_a_whole_record_when_the_heartbeat_shrinks(tmp_path, monkeypatch):
    # CI once read '{..., "heartbeat": 1796497104.695616}}': a shorter record written over a longer one,
    # read before the ftruncate that followed. Check the file after every write call, with heartbeat
    # times whose JSON alternates long and short, so the old order fails here every time.
    times = iter([1796497104.695616, 1796497104.5] * 3)
    monkeypatch.setattr(runlock.time, "time", lambda: next(times, 1796497104.5))
    seen = []

    def checked(call):
        def wrapped(fd, *args):
            out = call(fd, *args)
            seen.append(json.loads(os.pread(fd, 4096, 0) or b"{}"))  # raises on a torn record
            return out
        return wrapped

    monkeypatch.setattr(runlock.os, "pwrite", checked(os.pwrite))
    monkeypatch.setattr(runlock.os, "ftruncate", checked(os.ftruncate))
    lock = runlock.RunLock(tmp_path / ".lock", os.open(tmp_path / ".lock", os.O_RDWR | os.O_CREAT), heartbeat_s=3600)
    for _ in range(4):
        lock.record["heartbeat"] = runlock.time.time()
        lock._write()
    lock.release()
    assert [r.get("heartbeat") for r in seen[1:5]] == [1796497104.5, 1796497104.695616, 1796497104.5, 1796497104.695616]
    assert seen[-1] == {} and record(tmp_path) == {}


def leave_record(run_dir, host, age, pid=12345):
    (run_dir / ".lock").write_text(json.dumps(dict(pid=pid, host=host, started="2025-01-01T00:00:00+00:00",
                                                   command="train.py --run x", heartbeat=time.time() - age)))


def test_another_hosts_fresh_record_refuses_even_when_flock_is_granted(tmp_path, capsys):
    # a file system that does not share flock between nodes: the record is all another node's run leaves
    leave_record(tmp_path, "node-b", age=10)
    with pytest.raises(runlock.RunBusy) as e:
        runlock.acquire(tmp_path)
    assert "pid 12345 on host node-b" in str(e.value) and "did not share the lock between hosts" in str(e.value)
    assert f"stale {runlock.STALE_S - 10:.0f} s from now" in str(e.value)
    leave_record(tmp_path, "node-b", age=runlock.STALE_S + 1)  # silent too long: node-b is presumed lost
    runlock.acquire(tmp_path).release()
    assert "previous holder, pid 12345 on host node-b" in capsys.readouterr().err


def test_a_lost_nodes_lingering_lock_is_moved_aside_once_stale(tmp_path, holder, capsys):
    # the helper keeps the flock, as a file server keeps a lost node's lock; its record now names that node
    lingering = holder(tmp_path)
    leave_record(tmp_path, "node-b", age=60, pid=777)
    with pytest.raises(runlock.RunBusy, match="pid 777 on host node-b.*if node-b is lost, the lock counts as stale"):
        runlock.acquire(tmp_path)
    leave_record(tmp_path, "node-b", age=runlock.STALE_S + 1, pid=777)
    with runlock.acquire(tmp_path):
        assert record(tmp_path)["pid"] == os.getpid()
        assert (tmp_path / ".lock.stale-node-b-777").is_file()
        assert "node is presumed lost; moved its lock" in capsys.readouterr().err
    assert lingering.poll() is None  # the old holder was never touched: only its file was moved


def test_without_flock_the_record_alone_decides(tmp_path, holder, monkeypatch):
    alive = holder(tmp_path / "other")  # a live process of this host, to name in a record
    def no_flock(fd, op):
        raise OSError(38, "Function not implemented")  # Lustre mounted without -o flock
    monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
    leave_record(tmp_path, runlock.HOST, age=5, pid=alive.pid)
    with pytest.raises(runlock.RunBusy, match=f"pid {alive.pid} on host {runlock.HOST}"):
        runlock.acquire(tmp_path)
    kill(alive)
    runlock.acquire(tmp_path).release()  # its pid is gone: a killed process's record


# --- the scripts: train.py, train.py --resume, evaluate.py and torchrun against a held run --------

def start(*command, path):
    return subprocess.Popen([sys.executable, *command, "--run", "tiny", "--runs-file", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false"))


@pytest.mark.slow
def test_scripts_on_a_held_run_stop_at_once_and_resume_runs_after_a_sigkill(tmp_path, holder, tiny_model_dir,
                                                                          shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data)
    run_dir = tmp_path / "runs" / "tiny"
    first = holder(run_dir)
    commands = [("train.py",), ("train.py", "--resume"), ("evaluate.py",)]
    procs = [start(*c, path=path) for c in commands]  # side by side: the same lock, three contenders
    for command, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
        assert err.startswith(f"error: run folder {run_dir} is in use by pid {first.pid} on host "), (command, err)
        assert "trainable params" not in out  # stopped before loading the model
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # nothing of the run was written

    kill(first)  # as a lost job: the lock's record stays, the kernel's lock is gone
    out = script("train.py", path, "--resume", "--max_steps", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"previous holder, pid {first.pid}" in out.stderr and (run_dir / "adapter").is_dir()
    assert record(run_dir) == {}


@pytest.mark.slow
def test_a_training_run_holds_its_folder_until_its_checkpoint_is_saved(tmp_path, tiny_model_dir, shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, train_samples=240, epochs=100, save_every=1)
    run_dir = tmp_path / "runs" / "tiny"
    training = start("train.py", path=path)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint" / "state.pt").is_file():  # well into training, model and data loaded
        assert training.poll() is None and time.time() < deadline, training.communicate()[1][-2000:]
        time.sleep(0.05)
    assert record(run_dir)["pid"] == training.pid and "train.py --run tiny" in record(run_dir)["command"]
    # the scripts' side of a refusal is tested above; here the holder is what matters, so no second torch start-up
    with pytest.raises(runlock.RunBusy, match=f"in use by pid {training.pid} "):
        runlock.acquire(run_dir)
    training.send_signal(signal.SIGTERM)  # finishes its step, saves a checkpoint, then releases
    _, err = training.communicate(timeout=120)
    assert "stopped by signal" in err and "--resume" in err, err[-2000:]
    assert record(run_dir) == {}


@pytest.mark.slow
def test_every_rank_stops_when_rank_0_finds_the_run_held(tmp_path, holder, tiny_model_dir, shared_data):
    """torchrun's environment set by hand for 2 processes, so each rank's own exit and message are seen
    (torchrun itself would stop the other rank as soon as one fails, hiding whether it would have hung)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("needs torch.distributed with gloo")
    path = runs_file(tmp_path, tiny_model_dir, shared_data)
    first = holder(tmp_path / "runs" / "tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ranks = [subprocess.Popen([sys.executable, "train.py", "--run", "tiny", "--runs-file", str(path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                                       RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2"))
             for rank in (0, 1)]
    for rank, proc in enumerate(ranks):
        _, err = proc.communicate(timeout=120)  # a rank left waiting in a collective would hang here
        # rank 0 could not lock; rank 1 never tried, and heard it from rank 0
        assert proc.returncode == 1 and err.startswith(f"error: run folder {tmp_path / 'runs' / 'tiny'} is in use "
                                                       f"by pid {first.pid} "), (rank, err[-3000:])
