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


def write_predictions(runs_dir, name, row, lang, values, key="correct"):
    path = runs_dir / name / "eval" / row / f"{lang}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    preds = [{"id": f"q{i}", key: v} for i, v in enumerate(values)]
    path.write_text(json.dumps(dict(language=lang, n=len(values), predictions=preds)))


def test_headline_standard_error_is_of_the_paired_non_english_differences(tmp_path):
    write_results(tmp_path, "base_xnli_smollm2", "base", "xnli", {"base": {"en": 50.0, "de": 25.0}})
    write_results(tmp_path, "lora_xnli_smollm2", "lora", "xnli", {"lora": {"en": 100.0, "de": 75.0}})
    write_predictions(tmp_path, "base_xnli_smollm2", "base", "de", [True, False, False, False])
    write_predictions(tmp_path, "lora_xnli_smollm2", "lora", "de", [True, True, True, False])
    # English differs in every example: were it counted, the error would change
    write_predictions(tmp_path, "base_xnli_smollm2", "base", "en", [False, False, True, True])
    write_predictions(tmp_path, "lora_xnli_smollm2", "lora", "en", [True, True, True, True])
    table = replica.headline(replica.run_names(["smollm2"], ["xnli"]), tmp_path)
    lora = table["smollm2"]["xnli"]["lora"]
    # de differences 0, 100, 100, 0: mean 50, sample sd 57.735, s.e. 57.735 / 2
    assert lora["non_en_vs_base"] == pytest.approx(50.0)
    assert lora["non_en_vs_base_se"] == pytest.approx(100 / 3 ** 0.5 / 2)
    assert table["smollm2"]["xnli"]["base"]["non_en_vs_base_se"] == 0.0
    assert "| LoRA r=4 | 87.5 | 100.0 | 75.0 | +50.0 ± 28.9 |" in replica.render_headline(table)
    # XQuAD scores per question are the F1 each prediction carries
    write_results(tmp_path, "base_xquad_smollm2", "base", "xquad", {"base": {"en": 0.0, "de": 10.0}})
    write_predictions(tmp_path, "base_xquad_smollm2", "base", "de", [10.0, 30.0], key="f1")
    assert replica.per_example(tmp_path, "base_xquad_smollm2", "base", "f1") == {("de", "q0"): 10.0, ("de", "q1"): 30.0}
