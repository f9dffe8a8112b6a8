"""train.py then evaluate.py end to end on a tiny random Llama and a little real data, as a user
runs them; assertions are on the files they write."""
import json
import subprocess
import sys

import pytest
import torch

import config as C
from conftest import ROOT

pytestmark = pytest.mark.slow


def runs_file(tmp_path, model_dir, data_dir, **extra):
    run = dict(name="tiny", model=str(model_dir), method="prefix", task="xnli", data_dir=str(data_dir),
               train_source="xnli_en_validation", train_samples=24, eval_subset="heldout", eval_split="validation",
               eval_languages=["en", "de"], eval_samples=10, batch_size=4, epochs=1, lr=1e-2, max_length=128,
               save_every=2, n_prefix_tokens=4, out_dir=str(tmp_path / "runs"))
    run.update(extra)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "runs.yaml"
    path.write_text(json.dumps({"runs": [run]}))  # JSON is YAML
    return path


def script(name, path, *args):
    out = subprocess.run([sys.executable, name, "--run", "tiny", "--runs-file", str(path), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    return out


@pytest.mark.parametrize("method", ["prefix", "adapter", "soft_prompt", "lora", "full"])
def test_train_then_evaluate(tmp_path, tiny_model_dir, shared_data, method):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, method=method)
    out = script("train.py", path)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    log = json.loads((run_dir / "train_log.json").read_text())
    assert log["steps"] == 6 and len(log["log"]) == 6  # 24 examples / batch 4, one epoch
    assert log["train_truncation"]["n_examples"] == 24  # and how many of them max_length cut
    assert log["train_sources"] == {"xnli_en_validation": 24}  # what the adapter learnt from
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in log["log"])
    assert log["config"]["method"] == method and log["versions"]["torch"] == torch.__version__
    assert (run_dir / "adapter" / "adapter.safetensors").is_file()
    assert (run_dir / "checkpoint" / "state.pt").is_file()

    out = script("evaluate.py", path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["rows"]) == {"base", method} and results["train_sources"] == {"xnli_en_validation": 24}
    for row in ("base", method):
        for lang in ("en", "de"):
            per_lang = json.loads((run_dir / "eval" / row / f"{lang}.json").read_text())
            assert per_lang["n"] == 10 and len(per_lang["predictions"]) == 10
            accuracy = 100 * sum(p["correct"] for p in per_lang["predictions"]) / 10
            assert per_lang["metrics"]["accuracy"] == accuracy == results["rows"][row][lang]["accuracy"]
    assert per_lang["adapter_sha256"] and per_lang["config"]["name"] == "tiny"
    base_de = json.loads((run_dir / "eval" / "base" / "de.json").read_text())
    # the trained weights were loaded: the method's option scores are not the base model's
    assert [p["logprobs"] for p in per_lang["predictions"]] != [p["logprobs"] for p in base_de["predictions"]]
    en_de = [results["rows"][method][lang]["accuracy"] for lang in ("en", "de")]
    assert results["groups"]["script"][method] == {"Latn": sum(en_de) / 2}  # both Latin script
    md = (run_dir / "results.md").read_text()
    assert "| method | en | de | avg |" in md and f"| {method} |" in md
    assert (run_dir / "results.csv").read_text().startswith("method,en,de,avg")
    # the printed gain over base: paired on the same questions, the same number as the two rows' means
    gain = results["gain"]
    assert set(gain) == {"en", "de", "avg", "non_en"} and all(cell["ci"] for cell in gain.values())
    assert gain["de"]["mean"] == pytest.approx(results["rows"][method]["de"]["accuracy"] - results["rows"]["base"]["de"]["accuracy"])
    assert f"gain of {method} over base" in md and f"| **non-English avg (1)** | {gain['non_en']['mean']:+.1f}" in md
    # XNLI rows come three to a premise: recorded per prediction, and the interval draws premises
    assert all(p["group"].startswith("premise-") for p in per_lang["predictions"]) and "a passage at a time" in md


def test_generation_task_end_to_end(tmp_path, tiny_model_dir, shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, task="xquad", train_source="xquad_en_articles_0_31",
                     eval_subset="articles_32_47", eval_split=None, eval_languages=["en", "zh"], eval_samples=4,
                     train_samples=8, max_length=256, max_new_tokens=5, do_sample=False)
    assert script("train.py", path).returncode == 0
    out = script("evaluate.py", path, "--no-base")
    assert out.returncode == 0, out.stderr[-3000:]
    zh = json.loads((tmp_path / "runs" / "tiny" / "eval" / "prefix" / "zh.json").read_text())
    assert zh["n"] == 4 and {"f1", "em"} <= set(zh["metrics"])
    assert all(isinstance(p["prediction"], str) for p in zh["predictions"])


def test_finished_run_is_not_overwritten_and_evaluation_resumes(tmp_path, tiny_model_dir, shared_data):
    path = runs_file(tmp_path, tiny_model_dir, shared_data, train_samples=8)
    assert script("train.py", path).returncode == 0
    again = script("train.py", path)
    assert again.returncode != 0 and "already finished" in again.stderr and "--overwrite" in again.stderr
    assert script("evaluate.py", path, "--no-base").returncode == 0
    en = tmp_path / "runs" / "tiny" / "eval" / "prefix" / "en.json"
    de = tmp_path / "runs" / "tiny" / "eval" / "prefix" / "de.json"
    de.unlink()  # as if interrupted after English
    stamp = en.stat().st_mtime_ns
    assert script("evaluate.py", path, "--no-base").returncode == 0
    assert en.stat().st_mtime_ns == stamp and de.is_file()  # English kept, German redone


def test_resume_gives_the_same_adapter(tmp_path, tiny_model_dir, shared_data):
    from safetensors.torch import load_file
    # --max_steps below must not change the schedule; batches grouped by length must resume alike
    straight = runs_file(tmp_path / "a", tiny_model_dir, shared_data, train_samples=16, save_every=2,
                         lr_schedule="constant", group_by_length=True)
    assert script("train.py", straight).returncode == 0
    split = runs_file(tmp_path / "b", tiny_model_dir, shared_data, train_samples=16, save_every=2,
                      lr_schedule="constant", group_by_length=True)
    assert script("train.py", split, "--max_steps", "2").returncode == 0  # the "crash" after step 2
    (tmp_path / "b" / "runs" / "tiny" / "adapter" / "adapter_config.json").unlink()  # not finished
    refused = script("train.py", split)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    out = script("train.py", split, "--resume")
    assert out.returncode == 0 and "resumed" in out.stdout, out.stderr[-2000:]
    a = load_file(str(tmp_path / "a" / "runs" / "tiny" / "adapter" / "adapter.safetensors"))
    b = load_file(str(tmp_path / "b" / "runs" / "tiny" / "adapter" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_run_of_runs_yaml_dry_runs():
    from train import dry_run
    for name in C.load_runs():
        dry_run(C.get_run(name))


@pytest.mark.parametrize("n", [203, 1003])  # one window of GROUP_WINDOW batches of 8; three, the last short
def test_group_by_length_batches_cover_the_epoch_within_windows_and_pad_less(n):
    from train import GROUP_WINDOW, batch_order
    lengths = torch.randint(20, 600, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    plain, grouped = batch_order(n, 8, 0, 0), batch_order(n, 8, 0, 0, lengths)
    assert sorted(i for b in grouped for i in b) == list(range(n))
    assert sorted(map(len, grouped)) == sorted(map(len, plain))
    window = {i: k // (8 * GROUP_WINDOW) for k, i in enumerate(i for b in plain for i in b)}  # of the same shuffle
    assert all(len({window[i] for i in b}) == 1 for b in grouped)
    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches) / sum(lengths) - 1
    assert padding(grouped) < padding(plain) / 5
    # the batch order is shuffled too (not longest first), fixed per (seed, epoch)
    firsts = [max(lengths[i] for i in b) for b in grouped]
    assert firsts != sorted(firsts, reverse=True)
    assert grouped == batch_order(n, 8, 0, 0, lengths) and grouped != batch_order(n, 8, 1, 0, lengths)
