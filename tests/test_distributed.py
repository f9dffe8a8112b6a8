"""torchrun on the CPU: 2 gloo processes against 1 process, on the tiny random Llama.

Training: 2 ranks with the same global batch must give the 1-process loss curve and adapter (up to
float rounding), through a checkpoint and --resume, in ddp and in fsdp mode. Evaluation: 2 ranks
must write exactly the files 1 process writes, and keep a cached language. Every comparison is
against a 1-process run made here, never against stored numbers.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import config as C
import evaluate
import train
from conftest import ROOT
from test_pipeline import runs_file

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                 reason="needs torch.distributed with gloo")]

# 21 examples in global batches of 4 x 2 accumulated: 3 steps per epoch, and the epoch's last micro-batch
# holds 1 example, so rank 1 has none (it runs one at weight 0, which fsdp's all-gathers need). fp32: the
# tolerances below are fp32 rounding's, and dtype auto is bf16 on a CPU with native bf16
TRAIN = dict(train_samples=21, batch_size=4, grad_accum=2, epochs=2, lr_schedule="constant", save_every=2,
             dtype="float32")


def torchrun(script, path, *args, n=2):
    """`torchrun --standalone --nproc_per_node n script -- --run tiny ...` (the "--": see distributed.script_args)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                          script, "--", "--run", "tiny", "--runs-file", str(path), *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir, shared_data):
    """The reference: the same run trained and evaluated by one plain process (no torchrun)."""
    tmp = tmp_path_factory.mktemp("one")
    cfg = C.get_run("tiny", path=runs_file(tmp, tiny_model_dir, shared_data, **TRAIN))
    train.train(cfg)
    evaluate.run(cfg)
    return cfg.run_dir


def test_two_processes_train_as_one_through_a_checkpoint_ddp_then_fsdp(tmp_path, one_process, tiny_model_dir,
                                                                        shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, **TRAIN)
    run_dir = tmp_path / "runs" / "tiny"
    first = torchrun("train.py", path, "--max_steps", "3")  # ddp, then "crash" after step 3
    assert "2 processes (ddp), 2 of each batch of 4 per process" in first.stdout
    (run_dir / "adapter" / "adapter_config.json").unlink()  # not finished
    out = torchrun("train.py", path, "--resume", "--parallel", "fsdp")
    assert "resumed from" in out.stdout and out.stdout.count("resumed from") == 1  # rank 0 alone prints

    want = json.loads((one_process / "train_log.json").read_text())
    got = json.loads((run_dir / "train_log.json").read_text())
    assert got["world_size"] == 2 and got["parallel"] == "fsdp" and got["steps"] == want["steps"] == 6
    # Both runs add the same per-token terms in another order (per rank, then across ranks), so they
    # differ by float32 rounding alone: measured at most 1 ulp (5e-7 on these losses of ~6, 2.4e-7 on
    # adapter values of ~3) after 6 steps. rtol 1e-5 allows ~80 ulp. Normalising per rank instead (each
    # rank's mean over its own answer tokens, averaged over ranks) moved the loss by 1.7e-4 relative.
    tol = dict(rtol=1e-5, atol=1e-6)
    for key in ("loss", "grad_norm", "lr"):
        torch.testing.assert_close(torch.tensor([e[key] for e in got["log"]], dtype=torch.float64),
                                   torch.tensor([e[key] for e in want["log"]], dtype=torch.float64), **tol,
                                   msg=lambda m: f"{key} per step, 2 ranks vs 1: {m}")
    a = load_file(str(run_dir / "adapter" / "adapter.safetensors"))
    b = load_file(str(one_process / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol)
    # fsdp really sharded the frozen base: each rank held about half the weights (plus the whole adapter)
    assert got["weights_gib_per_rank"] < 0.6 * want["weights_gib_per_rank"]
    # rank 0 alone wrote: no stray temporary files from a second writer
    assert not list(run_dir.rglob("*.tmp"))


def comparable(path, run_dir):
    """A result file's JSON with this run's folder named alike and the timing dropped."""
    result = json.loads(path.read_text().replace(str(run_dir.parent), "<out>"))
    result.pop("seconds", None)
    return result


def test_two_processes_evaluate_to_the_single_process_files_and_resume(tmp_path, one_process, tiny_model_dir,
                                                                       shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, **TRAIN)
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(one_process, run_dir, ignore=shutil.ignore_patterns("eval", "results.*"))
    cached = run_dir / "eval" / "base" / "en.json"  # as if an earlier evaluation stopped after it
    cached.parent.mkdir(parents=True)
    shutil.copy(one_process / "eval" / "base" / "en.json", cached)
    stamp = cached.stat().st_mtime_ns
    torchrun("evaluate.py", path)
    assert cached.stat().st_mtime_ns == stamp  # kept, not recomputed
    for row, lang in (("base", "de"), ("prefix", "en"), ("prefix", "de")):
        got = comparable(run_dir / "eval" / row / f"{lang}.json", run_dir)
        want = comparable(one_process / "eval" / row / f"{lang}.json", one_process)
        assert len(got["predictions"]) == 10
        assert got == want, f"{row}/{lang}: 2 ranks differ from 1 process"
    assert comparable(run_dir / "results.json", run_dir) == comparable(one_process / "results.json", one_process)
    for name in ("results.csv", "results.md"):
        assert (run_dir / name).read_text() == (one_process / name).read_text()


def test_two_processes_sample_the_single_process_generations(tmp_path, tiny_model_dir, shared_data):
    """Sampled generation (XQuAD's default) with the batches split over ranks: each prompt draws from
    a generator of its own, so every sample is the one the single process draws."""
    path = runs_file(tmp_path, tiny_model_dir, shared_data, method="base", task="xquad", eval_subset="articles_32_47",
                     eval_split=None, eval_languages=["en", "zh"], eval_samples=5, eval_batch_size=2, max_length=256,
                     max_new_tokens=5, do_sample=True, temperature=1.0, top_p=1.0)
    one = C.get_run("tiny", {"out_dir": str(tmp_path / "one")}, path)
    evaluate.run(one)
    torchrun("evaluate.py", path)
    for lang in ("en", "zh"):
        got = comparable(tmp_path / "runs" / "tiny" / "eval" / "base" / f"{lang}.json", tmp_path / "runs" / "tiny")
        want = comparable(one.run_dir / "eval" / "base" / f"{lang}.json", one.run_dir)
        assert got["predictions"] == want["predictions"] and got["metrics"] == want["metrics"]
        assert len({p["prediction"] for p in got["predictions"]}) > 1  # sampled, not one repeated string


def test_bad_parallel_settings_are_one_message(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    from test_faults import fails
    path = runs_file(tmp_path, tiny_model_dir, shared_data, **TRAIN)
    fails(train.main, path, "--parallel", "zero", match=["parallel='zero' is not one of ddp, fsdp"])
    fails(train.main, path, "--parallel", "fsdp", match=["parallel 'fsdp'", "torchrun --nproc_per_node"])
    monkeypatch.setattr(train, "init_distributed", lambda: (0, 3, torch.device("cpu")))  # as under torchrun
    fails(train.main, path, match=["batch_size 4 is the global batch", "3 processes", "multiple of 3"])
    fails(train.main, path, "--batch_size", "6", "--parallel", "fsdp", "--method", "full",
          match=["method 'full'", "--parallel ddp"])


def test_map_batches_returns_every_result_in_order_and_shows_progress(capsys):
    import distributed
    order = [4, 0, 3, 1, 2]  # batched in this order, returned by index
    out = distributed.map_batches(lambda batch: [10 * i for i in batch], order, batch_size=2)
    assert out == [0, 10, 20, 30, 40]
    assert "/5 " in capsys.readouterr().err  # a bar over the 5 examples while the 3 batches run
