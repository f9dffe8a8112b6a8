"""report_to: train.py's curves (loss, lr, grad norm, tokens/s per step) and evaluate.py's scores per
language, read back from TensorBoard's event files and W&B's offline run, equal train_log.json and
results.json; a resumed run continues the numbering without duplicates; train.py and evaluate.py
push the adapter and its model card when push_to_hub is set (HfApi recorded, never called).

TensorBoard is a test dependency (requirements-dev.txt); W&B is optional and tested when installed.
"""
import argparse
import json
import struct

import pytest

import config as C
import evaluate
import train
from test_hub import front_matter, recorded_hub  # noqa: F401 (a fixture)
from test_pipeline import runs_file

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError as e:  # a clear failure, not a skip: report_to tensorboard is tested here
    raise ImportError("tests/test_report_to.py needs TensorBoard: pip install -r requirements-dev.txt") from e

pytestmark = pytest.mark.slow
TRAIN_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s")


def scalars(log_dir):
    """{tag: [(step, value), ...]} of every scalar TensorBoard would show for `log_dir`."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def run(main, path, *args):
    main(["--run", "tiny", "--runs-file", str(path), *args])


def test_tensorboard_curves_and_scores_equal_the_logs_across_a_resume(tmp_path, tiny_model_dir, shared_data,
                                                                      monkeypatch, recorded_hub):  # noqa: F811
    path = runs_file(tmp_path, tiny_model_dir, shared_data, train_samples=16, save_every=2, eval_samples=4,
                     report_to=["tensorboard"], push_to_hub="someone/tiny")  # 4 steps of 4 examples
    run_dir = tmp_path / "runs" / "tiny"
    real, calls = train.answer_loss, []

    def crash_at_step_4(*args):
        calls.append(1)
        if len(calls) == 4:  # steps 1-3 logged, the checkpoint holds steps 1-2
            raise RuntimeError("crash")
        return real(*args)
    monkeypatch.setattr(train, "answer_loss", crash_at_step_4)
    with pytest.raises(RuntimeError, match="crash"):
        run(train.main, path)
    assert [step for step, _ in scalars(run_dir / "logs")["train/loss"]] == [1, 2, 3]

    run(train.main, path, "--resume")  # from step 2: step 3 again, then 4
    log = json.loads((run_dir / "train_log.json").read_text())
    assert log["steps"] == 4
    curves = scalars(run_dir / "logs")
    for key in TRAIN_KEYS:  # once per step: what the interrupted run logged past its checkpoint is dropped
        want = [(entry["step"], pytest.approx(entry[key], rel=1e-6)) for entry in log["log"]]
        assert curves[f"train/{key}"] == want, key
    assert all(entry["tokens_per_s"] > 0 for entry in log["log"])

    run(evaluate.main, path)
    results = json.loads((run_dir / "results.json").read_text())
    curves = scalars(run_dir / "logs")
    for row in ("base", "prefix"):
        for lang in ("en", "de"):
            value = results["rows"][row][lang]["accuracy"]
            assert curves[f"eval/{row}/{lang}/accuracy"] == [(4, pytest.approx(value, rel=1e-6))]

    # pushed at the end of training (no scores yet) and after evaluation (with them)
    uploads = [kw["files"]["README.md"].decode() for name, repo, kw in recorded_hub if name == "upload_folder"]
    assert [repo for name, repo, _ in recorded_hub] == ["someone/tiny"] * 4 and len(uploads) == 2
    assert "Not evaluated yet" in uploads[0] and "| xnli_en_validation | 16 |" in uploads[0]
    assert "| prefix |" in uploads[1] and "Not evaluated yet" not in uploads[1]
    assert "base_model" not in front_matter(uploads[1])  # a local model folder is no hub id


def wandb_records(path):
    """The records of a W&B transaction log (run-<id>.wandb, the file `wandb sync` uploads): LevelDB's
    log format, 32 KiB blocks of chunks with a 7-byte header (crc32, length, type), after W&B's own
    7-byte file header."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST, MIDDLE..., LAST
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_wandb_offline_run_holds_the_curves_and_scores(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    pytest.importorskip("wandb", reason="W&B is optional (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    path = runs_file(tmp_path, tiny_model_dir, shared_data, train_samples=8, eval_samples=2, eval_languages=["de"],
                     report_to=["wandb"])
    run(train.main, path)
    run(evaluate.main, path, "--no-base")
    run_dir = tmp_path / "runs" / "tiny"
    run_id = (run_dir / "logs" / "wandb_run_id").read_text()
    # training's and evaluation's, one W&B run id, synced together (a second one started in the same
    # second is offline-run-<time>-<id>-1)
    files = sorted((run_dir / "logs" / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"))
    assert len(files) == 2
    history, summary = {}, {}
    for file in files:
        for record in wandb_records(file):
            if record.HasField("history"):
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                history[record.history.step.num] = items
            if record.HasField("summary"):
                summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                for i in record.summary.update})
    log = json.loads((run_dir / "train_log.json").read_text())
    assert sorted(history) == [entry["step"] for entry in log["log"]] == [1, 2]
    for entry in log["log"]:
        for key in TRAIN_KEYS:
            assert history[entry["step"]][f"train/{key}"] == pytest.approx(entry[key], rel=1e-9), key
    results = json.loads((run_dir / "results.json").read_text())
    assert summary["eval/prefix/de/accuracy"] == results["rows"]["prefix"]["de"]["accuracy"]


def test_report_to_and_push_to_hub_are_checked(tmp_path, monkeypatch, tiny_model_dir, shared_data):
    raw = dict(name="x", model="m", method="lora", task="xnli", report_to=["tensorboard", "mlflow"],
               push_to_hub="not a repo")
    problems = "\n".join(C.validate(raw, "run 'x'"))
    assert "report_to=['tensorboard', 'mlflow'] is not one of tensorboard, wandb" in problems
    assert "push_to_hub='not a repo' should be a hub repo id" in problems
    assert C.validate(dict(raw, report_to=None, push_to_hub="someone/repo"), "x") == []
    parser = argparse.ArgumentParser()
    C.add_override_args(parser)
    for text, want in [("tensorboard,wandb", ["tensorboard", "wandb"]), ("tensorboard", ["tensorboard"]),
                       ("none", None)]:
        assert C.overrides_from_args(parser.parse_args(["--report_to", text]))["report_to"] == want
    # a logger that is not installed: one message, before the model loads
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    loaded = []
    monkeypatch.setattr(train.models, "load_model", lambda *a, **kw: loaded.append(1))
    path = runs_file(tmp_path, tiny_model_dir, shared_data, report_to=["wandb"])
    with pytest.raises(SystemExit, match="error: report_to wandb needs the package: pip install wandb"):
        run(train.main, path)
    assert not loaded
