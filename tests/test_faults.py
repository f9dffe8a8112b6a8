"""Faults and bad input: signals and kills mid-training, non-finite steps, out-of-memory in
evaluation, stale cached results, and every kind of bad input giving one message, never a traceback.

Bad inputs mostly call main() in-process: an exception other than SystemExit fails the test, which
is what "no traceback" means, at a fraction of a subprocess's start-up cost. A few go through a real
subprocess to check the whole command line path as a user sees it.
"""
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import config as C
import data
import evaluate
import train
from conftest import ROOT, make_tiny_model_dir
from test_pipeline import runs_file, script

pytestmark = pytest.mark.slow

# long enough (60 steps) that a signal sent after the first checkpoint lands mid-run
LONG = dict(train_samples=240, save_every=5, eval_samples=6)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model_dir, shared_data):
    """An uninterrupted run: the reference for resumed runs, and a trained adapter to evaluate."""
    tmp = tmp_path_factory.mktemp("straight")
    out = script("train.py", runs_file(tmp, tiny_model_dir, shared_data, **LONG))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "runs" / "tiny"


def start_training(path, *args):
    return subprocess.Popen([sys.executable, "train.py", "--run", "tiny", "--runs-file", str(path), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, timeout=300):
    deadline = time.time() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"training ended before {path} appeared: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, f"{path} did not appear in {timeout}s"
        time.sleep(0.02)


def same_adapter(run_a, run_b):
    a = load_file(str(run_a / "adapter" / "adapter.safetensors"))
    b = load_file(str(run_b / "adapter" / "adapter.safetensors"))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_a_checkpoint_and_resume_matches_a_straight_run(tmp_path, straight, tiny_model_dir,
                                                                         shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, **LONG)
    ckpt = tmp_path / "runs" / "tiny" / "checkpoint" / "state.pt"
    proc = start_training(path)
    wait_for(ckpt, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "stopped by signal" in stderr and "--resume" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr
    state = torch.load(ckpt, weights_only=True)
    assert 0 < state["step"] < 60 and len(state["log"]) == state["step"]
    assert not (tmp_path / "runs" / "tiny" / "adapter").exists()
    out = script("train.py", path, "--resume")
    assert out.returncode == 0 and "resumed from" in out.stdout, out.stderr[-2000:]
    # the default linear schedule spans the whole run either way, so the adapters must be equal
    assert same_adapter(straight, tmp_path / "runs" / "tiny")


def test_sigkill_leaves_a_loadable_checkpoint_and_resume_matches(tmp_path, straight, tiny_model_dir, shared_data):
    # a checkpoint every step, so the kill likely lands while one is being written
    path = runs_file(tmp_path, tiny_model_dir, shared_data, **dict(LONG, save_every=1))
    ckpt = tmp_path / "runs" / "tiny" / "checkpoint" / "state.pt"
    proc = start_training(path)
    wait_for(ckpt, proc)  # then kill at once: with save_every=1 the next save is likely under way
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(ckpt, weights_only=True)
    assert 0 < state["step"] < 60
    out = script("train.py", path, "--resume")
    assert out.returncode == 0 and "resumed from" in out.stdout, out.stderr[-2000:]
    assert same_adapter(straight, tmp_path / "runs" / "tiny")


@pytest.mark.parametrize("change", [("--batch_size", "2"), ("--group_by_length", "true")])
def test_resume_with_another_data_layout_is_refused(tmp_path, straight, tiny_model_dir, shared_data, change):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, **LONG)
    shutil.copytree(straight / "checkpoint", tmp_path / "runs" / "tiny" / "checkpoint")
    fails(train.main, path, "--resume", *change, match=["data layout", "--overwrite"])


@pytest.fixture
def nan_at_step_3(monkeypatch):
    real, calls = train.answer_loss, []
    def answer_loss(*args):
        calls.append(1)
        loss = real(*args)
        return loss * float("nan") if len(calls) == 3 else loss
    monkeypatch.setattr(train, "answer_loss", answer_loss)


def test_non_finite_loss_stops_naming_the_step_and_checkpoint(tmp_path, tiny_model_dir, shared_data, nan_at_step_3):
    cfg = C.get_run("tiny", path=runs_file(tmp_path, tiny_model_dir, shared_data, train_samples=24))
    with pytest.raises(SystemExit) as e:
        train.train(cfg)
    assert "non-finite loss" in str(e.value) and "at step 3" in str(e.value)
    assert str(cfg.run_dir / "checkpoint") in str(e.value)  # save_every=2: step 2's checkpoint


def test_skip_nonfinite_skips_and_reports_the_step(tmp_path, tiny_model_dir, shared_data, nan_at_step_3):
    cfg = C.get_run("tiny", path=runs_file(tmp_path, tiny_model_dir, shared_data, train_samples=24,
                                           skip_nonfinite=True))
    train.train(cfg)
    log = json.loads((cfg.run_dir / "train_log.json").read_text())
    assert log["steps"] == 6 and log["n_skipped_steps"] == 1 and log["skipped_steps"] == [3]
    assert log["log"][2]["skipped"] and all(e["loss"] is not None for i, e in enumerate(log["log"]) if i != 2)
    adapter = load_file(str(cfg.run_dir / "adapter" / "adapter.safetensors"))
    assert all(torch.isfinite(t).all() for t in adapter.values())


def test_evaluation_halves_its_batch_on_out_of_memory(tiny_model_dir, shared_data, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    task = data.load_task("xnli")
    examples = task.eval_examples("en", str(shared_data), n=5, split="validation")
    prompts = [task.prompt(ex) for ex in examples]
    # 12 examples: at least 12 forward rows however the options tokenise (one row per example
    # when every option is one token, one per option otherwise)
    many = task.eval_examples("en", str(shared_data), n=12, split="validation")
    many_prompts, many_choices = [task.prompt(ex) for ex in many], [task.choices(ex) for ex in many]
    want_scores = evaluate.choice_logprobs(model, tokenizer, many_prompts, many_choices, batch_size=2, device="cpu")
    want_texts = evaluate.generate(model, tokenizer, prompts, batch_size=2, device="cpu", max_new_tokens=3)

    sizes = []
    def too_big(rows):
        sizes.append(rows)
        if rows > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
    forward = model.model.forward  # every forward of scoring and of generation (decode_rows) goes through it
    monkeypatch.setattr(model.model, "forward", lambda input_ids, **kw: too_big(len(input_ids)) or
                        forward(input_ids=input_ids, **kw))
    assert evaluate.choice_logprobs(model, tokenizer, many_prompts, many_choices, batch_size=8, device="cpu") \
        == want_scores
    assert sizes[:2] == [8, 4] and max(sizes[2:]) == 2
    sizes.clear()
    assert evaluate.generate(model, tokenizer, prompts, batch_size=8, device="cpu", max_new_tokens=3) == want_texts
    assert sizes[:2] == [5, 2] and max(sizes[1:]) == 2  # then every forward of a batch of 2 or fewer rows
    captured = capsys.readouterr()
    err = captured.out + captured.err  # tqdm.write prints to stdout
    assert "out of GPU memory with a batch of 8; continuing with 4" in err
    assert "out of GPU memory with a batch of 5; continuing with 2" in err


def fails(main, path, *args, match):
    """main() must exit non-zero with one message holding every string of `match`."""
    with pytest.raises(SystemExit) as e:
        main(["--run", "tiny", "--runs-file", str(path), *args])
    message = str(e.value.code)
    assert e.value.code not in (0, None) and all(m in message for m in match), message
    return message


def copy_run(straight, tmp_path):
    shutil.copytree(straight, tmp_path / "runs" / "tiny", ignore=shutil.ignore_patterns("eval", "results.*"))
    return tmp_path / "runs" / "tiny"


def test_results_record_the_adapter_hash_and_stale_caches_are_refused(tmp_path, straight, tiny_model_dir,
                                                                      shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, **LONG)
    run_dir = copy_run(straight, tmp_path)
    evaluate.main(["--run", "tiny", "--runs-file", str(path), "--no-base"])
    sha = data.file_sha256(run_dir / "adapter" / "adapter.safetensors")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["adapter_sha256"] == sha and results["config"]["eval_samples"] == 6
    assert results["git_commit"] and results["versions"]["torch"] and results["device"]
    assert json.loads((run_dir / "eval" / "prefix" / "de.json").read_text())["adapter_sha256"] == sha

    # another sample size: the cached languages are not mixed into the new table
    fails(evaluate.main, path, "--no-base", "--eval_samples", "4", match=["eval_samples 6 -> 4", "--overwrite"])
    evaluate.main(["--run", "tiny", "--runs-file", str(path), "--no-base", "--eval_samples", "4", "--overwrite"])
    assert json.loads((run_dir / "eval" / "prefix" / "en.json").read_text())["n"] == 4

    # a retrained adapter (other weights, other hash): refused the same way
    tensors = load_file(str(run_dir / "adapter" / "adapter.safetensors"))
    save_file({k: v + 1 for k, v in tensors.items()}, str(run_dir / "adapter" / "adapter.safetensors"))
    fails(evaluate.main, path, "--no-base", "--eval_samples", "4", match=["adapter_sha256", "--overwrite"])


def test_nothing_untrusted_is_executed(straight):
    torch.load(straight / "checkpoint" / "state.pt", weights_only=True)  # tensors and plain data only
    assert sorted(p.name for p in (straight / "adapter").iterdir()) == ["README.md", "adapter.safetensors",
                                                                       "adapter_config.json"]
    assert C.RunConfig.__dataclass_fields__["trust_remote_code"].default is False
    for source in [*ROOT.glob("*.py"), *ROOT.glob("data/*.py")]:  # the data package too
        text = source.read_text()
        assert "import pickle" not in text and "yaml.load(" not in text and "yaml.unsafe_load" not in text, source
        assert "trust_remote_code=True" not in text, source
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{source}: {line}"


# --- bad input: one message, a non-zero exit, no traceback ----------------------------------------

def run_script(name, path, *args):
    out = script(name, path, *args)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return out.stderr


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "runs.yaml"
    path.write_text("runs:\n  - name: tiny\n    model: [unclosed\n    method: prefix\n")
    err = run_script("train.py", path)
    assert err.startswith("error: ") and "malformed YAML at line 4" in err


def test_unknown_and_mistyped_keys_are_all_listed(tmp_path, tiny_model_dir, shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, lrr=1e-3, batch_size="eight")
    message = fails(train.main, path, match=["unknown key 'lrr'", "batch_size='eight' should be int"])
    assert "2 problem(s)" in message
    fails(train.main, runs_file(tmp_path, tiny_model_dir, shared_data), "--lr", "fast", match=["--lr 'fast'", "float"])


@pytest.mark.parametrize("field, value, match", [
    ("model", "no-such-model", ["unknown model 'no-such-model'", "llama3.1-8b"]),
    ("method", "qlora", ["method='qlora' is not one of", "soft_prompt"]),
    ("task", "squad2", ["unknown task 'squad2'", "xnli"]),
    ("eval_languages", ["en", "xx"], ["no language(s) xx", "valid: ", "de"]),
    ("n_prefix_tokens", 0, ["n_prefix_tokens=0 must be positive"]),
    ("n_adapted_layers", 7, ["n_adapted_layers must be in 1..3 (the model has 3 layers)"]),
])
def test_unknown_names_and_out_of_range_options(tmp_path, tiny_model_dir, shared_data, field, value, match):
    fails(train.main, runs_file(tmp_path, tiny_model_dir, shared_data, **{field: value}), match=match)
    if field == "eval_languages":
        fails(evaluate.main, runs_file(tmp_path, tiny_model_dir, shared_data, **{field: value}), match=match)


def test_unknown_run_lists_the_known_ones(tmp_path, tiny_model_dir, shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data)
    err = run_script("evaluate.py", path, "--run", "nope")  # the last --run wins
    assert "unknown run 'nope'; known runs: tiny" in err


def test_missing_and_malformed_data_files(tmp_path, tiny_model_dir, shared_data):
    data_dir = tmp_path / "data"
    fails(train.main, runs_file(tmp_path, tiny_model_dir, data_dir),
          match=[str(data_dir / "xnli" / "en" / "validation.jsonl"), "not found", "expected layout"])
    (data_dir / "xnli" / "en").mkdir(parents=True)
    lines = (shared_data / "xnli" / "en" / "validation.jsonl").read_text().splitlines()
    lines[2] = '{"premise": "cut off'
    bad = data_dir / "xnli" / "en" / "validation.jsonl"
    bad.write_text("\n".join(lines))
    fails(train.main, runs_file(tmp_path, tiny_model_dir, data_dir), match=[f"{bad} line 3 is not JSON"])
    (data_dir / "xquad").mkdir()
    (data_dir / "xquad" / "xquad.en.json").write_text('{"data": [')
    fails(train.main, runs_file(tmp_path, tiny_model_dir, data_dir, task="xquad", train_source="xquad_en_articles_0_31",
                                eval_subset=None, eval_split=None), match=["xquad.en.json is not valid JSON"])


def test_row_without_a_field_is_one_message(tmp_path, tiny_model_dir, shared_data):
    data_dir = tmp_path / "data"
    (data_dir / "xnli" / "en").mkdir(parents=True)
    rows = (shared_data / "xnli" / "en" / "validation.jsonl").read_text().splitlines()
    rows[0] = '{"hypothesis": "no premise here", "label": 0}'
    (data_dir / "xnli" / "en" / "validation.jsonl").write_text("\n".join(rows))
    fails(train.main, runs_file(tmp_path, tiny_model_dir, data_dir), match=["without the field 'premise'"])


def test_folders_that_are_not_models(tmp_path, tiny_model_dir, shared_data):
    (tmp_path / "empty").mkdir()
    fails(train.main, runs_file(tmp_path, tmp_path / "empty", shared_data), match=["no config.json", "not a"])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama"}')  # no tokenizer, no weights
    fails(train.main, runs_file(tmp_path, tmp_path / "broken", shared_data), match=["could not be loaded"])
    no_weights = shutil.copytree(tiny_model_dir, tmp_path / "no_weights", ignore=shutil.ignore_patterns("*.safetensors"))
    fails(train.main, runs_file(tmp_path, no_weights, shared_data), match=["could not be loaded", "no_weights"])


def test_adapters_of_another_model_or_method_or_corrupt(tmp_path, straight, tiny_model_dir, shared_data):
    run_dir = copy_run(straight, tmp_path)
    other_model = make_tiny_model_dir(tmp_path / "other", n_layers=2)
    fails(evaluate.main, runs_file(tmp_path, other_model, shared_data, **LONG), "--no-base",
          match=["trained on another model shape", "num_hidden_layers"])
    fails(evaluate.main, runs_file(tmp_path, tiny_model_dir, shared_data, **dict(LONG, method="lora")), "--no-base",
          match=["is a 'prefix' adapter, but the run's method is 'lora'"])
    path = runs_file(tmp_path, tiny_model_dir, shared_data, **LONG)
    weights = run_dir / "adapter" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # torn
    err = run_script("evaluate.py", path, "--no-base")
    assert "adapter.safetensors is unreadable" in err
    (run_dir / "adapter" / "adapter_config.json").write_text("{not json")
    fails(evaluate.main, path, "--no-base", match=["adapter_config.json is corrupt"])


def test_unreadable_checkpoint_is_one_message(tmp_path, straight, tiny_model_dir, shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, **LONG)
    (tmp_path / "runs" / "tiny" / "checkpoint").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "checkpoint" / "state.pt").write_bytes(b"not a checkpoint")
    fails(train.main, path, "--resume", match=["state.pt is unreadable", "--overwrite"])
