"""runs.yaml loading: typed fields, every problem in one message, CLI overrides, dry runs."""
import argparse
import subprocess
import sys

import pytest

import config as C
from conftest import ROOT


def write(tmp_path, text):
    path = tmp_path / "runs.yaml"
    path.write_text(text)
    return path


GOOD = """
defaults: {lr: 3.0e-3, epochs: 2}
runs:
  - &a {name: a, model: smollm2-135m, method: prefix, task: xnli, data_dir: data}
  - {<<: *a, name: b, method: lora, lora_rank: 8}
"""


def test_defaults_anchors_and_relative_paths(tmp_path):
    path = write(tmp_path, GOOD)
    cfg = C.get_run("b", path=path)
    assert (cfg.method, cfg.lora_rank, cfg.lr, cfg.epochs, cfg.weight_decay) == ("lora", 8, 3e-3, 2.0, 0.02)
    assert cfg.data_dir == str((tmp_path / "data").resolve())  # relative to runs.yaml, not the cwd
    assert cfg.run_dir == (tmp_path / "runs" / "b").resolve()


def test_all_problems_in_one_error(tmp_path):
    path = write(tmp_path, """
runs:
  - {name: x, model: m, method: prefx, task: xnli, lr: fast, n_prefix_tokens: 0, colour: red, eval_draw: premises}
  - {name: y, method: lora, task: xnli}
""")
    with pytest.raises(ValueError) as info:
        C.load_runs(path)
    text = str(info.value)
    assert "6 problem(s)" in text
    for part in ["unknown key 'colour'", "method='prefx' is not one of", "lr='fast' should be float",
                 "eval_draw='premises' is not one of rows, groups",
                 "n_prefix_tokens=0 must be positive", "run 'y': missing required key 'model'"]:
        assert part in text, part


def test_unknown_run_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="unknown run 'zzz'; known runs: a, b"):
        C.get_run("zzz", path=write(tmp_path, GOOD))


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(ValueError, match="malformed YAML at line 3, column 3"):
        C.load_runs(write(tmp_path, "runs:\n  - name: a\n  model: x\n"))


def parse(argv):
    parser = argparse.ArgumentParser()
    C.add_override_args(parser)
    return C.overrides_from_args(parser.parse_args(argv))


def test_cli_overrides_are_type_checked(tmp_path):
    overrides = parse(["--lr", "1e-3", "--epochs", "1", "--eval_languages", "en,de", "--n_adapted_layers", "none"])
    assert overrides == {"lr": 1e-3, "epochs": 1.0, "eval_languages": ["en", "de"], "n_adapted_layers": None}
    assert isinstance(overrides["epochs"], float)
    with pytest.raises(ValueError, match="--batch_size 'eight' should be int"):
        parse(["--batch_size", "eight"])
    with pytest.raises(ValueError, match="batch_size=0 must be positive"):
        C.get_run("a", parse(["--batch_size", "0"]), path=write(tmp_path, GOOD))


def test_repo_runs_file_is_valid():
    runs = C.load_runs()
    assert "demo" in runs and "prefix_xnli_llama8b" in runs


def test_dry_run_prints_config_and_count():
    out = subprocess.run([sys.executable, "train.py", "--run", "prefix_xnli_llama8b", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "trainable params: 1,228,800" in out.stdout
    assert '"model": "llama3.1-8b"' in out.stdout


def test_cli_errors_are_one_line_not_tracebacks():
    out = subprocess.run([sys.executable, "train.py", "--run", "no_such_run", "--dry-run"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "error: unknown run 'no_such_run'; known runs: demo" in out.stderr
    assert "Traceback" not in out.stderr


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    """`lr: 1e-5` is a string to YAML 1.1 (no dot in the mantissa); for a float field it means 1e-5,
    while a word there stays a type error."""
    path = tmp_path / "runs.yaml"
    path.write_text("runs:\n  - {name: a, model: m, method: prefix, task: xnli, lr: 1e-5, temperature: 2e-1}\n")
    cfg = C.get_run("a", path=path)
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float) and cfg.temperature == 0.2
    path.write_text("runs:\n  - {name: a, model: m, method: prefix, task: xnli, lr: fast}\n")
    with pytest.raises(ValueError, match="lr='fast' should be float"):
        C.get_run("a", path=path)


def test_adapter_config_and_eval_settings_come_from_the_fields(tmp_path):
    """RunConfig hands attach its adapter settings whole, and the settings that key evaluate.py's
    cached results are the fields marked eval_setting: not batch sizes or the attention backend."""
    from adapters import AdapterConfig
    cfg = C.get_run("b", path=write(tmp_path, GOOD))
    assert cfg.adapter_config == AdapterConfig("lora", n_prefix_tokens=10, n_adapted_layers=None, lora_rank=8,
                                               lora_alpha=8.0)
    assert set(C.EVAL_SETTINGS) == {"model", "task", "data_dir", "eval_subset", "eval_split", "eval_samples",
                                    "prompt_style", "max_length", "eval_fit", "choice_scoring", "max_new_tokens",
                                    "do_sample", "temperature", "top_p", "dtype", "eval_seed", "eval_draw"}
    assert C.FIELDS["eval_fit"].metadata["before"] == "cut, unrecorded"
