"""replica.py: its runs exist in runs.yaml, overrides are checked, and the headline table is
computed from results.json files as evaluate.py writes them."""
import json

import pytest

import config as C
import replica


def test_every_replica_run_is_in_runs_yaml_with_its_method_task_and_model():
    runs = C.load_runs()
    models = {"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}
    for name in replica.run_names(replica.MODELS, replica.TASKS):
        cfg = C.get_run(name)
        method, task, model = name.split("_" + cfg.task + "_")[0], cfg.task, name.rsplit("_", 1)[1]
        assert (cfg.method, cfg.task, cfg.model) == (method, task, models[model]), name
        assert name in runs
    # every method of a (model, task) shares data and sizes: only the method differs
    for model in replica.MODELS:
        for task in replica.TASKS:
            cfgs = [C.get_run(f"{m}_{task}_{model}") for m in replica.METHODS]
            shared = [{k: v for k, v in vars(c).items() if k not in ("name", "method")} for c in cfgs]
            assert all(s == shared[0] for s in shared), (model, task)


def test_set_overrides_are_checked_before_any_work():
    args, values = replica.parse_sets(["eval_samples=16", "lr=1e-3"])
    assert args == ["--eval_samples", "16", "--lr", "1e-3"] and values == {"eval_samples": 16, "lr": 1e-3}
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        replica.parse_sets(["no_such_field=1"])
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        replica.parse_sets(["eval_samples"])


def write_results(runs_dir, name, method, task, rows):
    metric = "f1" if task == "xquad" else "accuracy"
    langs = list(next(iter(rows.values())))
    out = dict(task=task, metric=metric, languages=langs, config=dict(method=method, model="m"),
               rows={row: {lang: {metric: v} for lang, v in values.items()} for row, values in rows.items()})
    (runs_dir / name).mkdir(parents=True)
    (runs_dir / name / "results.json").write_text(json.dumps(out))


def test_headline_english_non_english_and_change_against_base(tmp_path):
    write_results(tmp_path, "base_xquad_smollm2", "base", "xquad", {"base": {"en": 10.0, "de": 4.0, "zh": 2.0}})
    write_results(tmp_path, "lora_xquad_smollm2", "lora", "xquad",
                  {"lora": {"en": 30.0, "de": 2.0, "zh": 0.0}})
    write_results(tmp_path, "prefix_belebele_smollm2", "prefix", "belebele",
                  {"base": {"eng_Latn": 25.0, "deu_Latn": 25.0}, "prefix": {"eng_Latn": 40.0, "deu_Latn": 35.0}})
    names = replica.run_names(["smollm2"], ["xquad", "belebele"])  # the others have no results: skipped
    table = replica.headline(names, tmp_path)
    lora = table["smollm2"]["xquad"]["lora"]
    assert lora["avg"] == pytest.approx(32 / 3) and lora["en"] == 30.0 and lora["non_en"] == pytest.approx(1.0)
    assert lora["non_en_vs_base"] == pytest.approx(1.0 - 3.0)  # LoRA loses non-English here
    assert table["smollm2"]["xquad"]["base"]["non_en_vs_base"] == 0.0
    prefix = table["smollm2"]["belebele"]["prefix"]
    assert prefix["en"] == 40.0 and prefix["non_en"] == 35.0  # Belebele's English is eng_Latn
    assert prefix["non_en_vs_base"] is None  # no base run of that task: no change to report
    text = replica.render_headline(table)
    assert "| LoRA r=4 | 10.7 | 30.0 | 1.0 | -2.0 |" in text
