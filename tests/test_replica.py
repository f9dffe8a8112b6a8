"""replica.py: its runs exist in runs.yaml at issue 15's sizes, seeds go to their own folders and are
scored on the same examples, resuming skips finished work, the headline pools seeds as report.compare
does, and the findings' rules give each verdict on per-example results built for it."""
import argparse
import dataclasses
import json
import math
import shutil
import sys

import numpy as np
import pytest
import scipy.stats

import config as C
import data
import replica
import report
import stats

N_RESAMPLES = 500


def test_every_replica_run_is_in_runs_yaml_with_its_method_task_and_model():
    runs = C.load_runs()
    models = {"smollm2": "smollm2-135m", "gemma3": "gemma3-270m"}
    for name in replica.run_names(replica.MODELS, replica.TASKS):
        cfg = C.get_run(name)
        method, task, model = name.split("_" + cfg.task + "_")[0], cfg.task, name.rsplit("_", 1)[1]
        assert (cfg.method, cfg.task, cfg.model) == (method, task, models[model]), name
        assert name in runs
        assert cfg.seed == 0 and cfg.eval_seed == 0, name  # seed 0 lives in <out_dir>/<name>; --seeds adds the others
        assert cfg.dtype == "float32", name  # the same numbers whichever CPU a session gets
    # every method of a (model, task) shares data and sizes: only the method differs
    for model in replica.MODELS:
        for task in replica.TASKS:
            cfgs = [C.get_run(f"{m}_{task}_{model}") for m in replica.METHODS]
            shared = [{k: v for k, v in vars(c).items() if k not in ("name", "method")} for c in cfgs]
            assert all(s == shared[0] for s in shared), (model, task)


@pytest.mark.parametrize("model", replica.MODELS)
def test_issue_15_sizes_every_held_out_question_with_whole_prompts(model):
    xquad, belebele, xnli = (C.get_run(f"base_{t}_{model}") for t in ("xquad", "belebele", "xnli"))
    assert (xquad.eval_subset, xquad.eval_samples, xquad.eval_fit) == ("articles_32_47", None, "whole")
    assert (belebele.eval_subset, belebele.eval_samples, belebele.eval_fit) == ("heldout", None, "whole")
    # XNLI: every held-out row (at 400 the measured s.e. was over the 2.0 target; runs.yaml says why)
    assert (xnli.eval_subset, xnli.eval_samples, xnli.eval_fit) == ("heldout", None, "whole")


def test_set_overrides_are_checked_before_any_work():
    args, values = replica.parse_sets(["eval_samples=16", "lr=1e-3"])
    assert args == ["--eval_samples", "16", "--lr", "1e-3"] and values == {"eval_samples": 16, "lr": 1e-3}
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        replica.parse_sets(["no_such_field=1"])
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        replica.parse_sets(["eval_samples"])
    with pytest.raises(SystemExit, match="--seeds"):
        replica.parse_sets(["seed=3"])


def test_seeds_go_to_their_own_folders_and_score_the_same_examples(tmp_path):
    name = "lora_xnli_smollm2"
    jobs = replica.seed_runs(name, {"out_dir": str(tmp_path)}, [0, 1, 2])
    assert [key for key, _, _ in jobs] == [name, f"seed1/{name}", f"seed2/{name}"]
    assert [cfg.run_dir for _, cfg, _ in jobs] == [tmp_path / name] + [tmp_path / f"seed{s}" / name for s in (1, 2)]
    assert [cfg.seed for _, cfg, _ in jobs] == [0, 1, 2]
    assert {cfg.eval_seed for _, cfg, _ in jobs} == {0}
    assert jobs[0][2] == [] and jobs[1][2] == ["--seed", "1", "--out_dir", str(tmp_path / "seed1")]
    # what train.py and evaluate.py make of the arguments (after --set's) is the config the job holds
    parser = argparse.ArgumentParser()
    C.add_override_args(parser)
    for key, cfg, args in jobs:
        parsed = C.overrides_from_args(parser.parse_args(["--out_dir", str(tmp_path)] + args))
        assert C.get_run(name, parsed) == cfg, key
    # a relative out_dir resolves against runs.yaml's folder, as the yaml value does
    assert C.get_run(name).run_dir == C.RUNS_FILE.parent / "results" / "replica" / "runs" / name  # committed
    seed1 = C.get_run(name, {"out_dir": "results/replica/runs/seed1"})
    assert seed1.run_dir == C.get_run(name).run_dir.parent / "seed1" / name
    (key, base, args), = replica.seed_runs("base_xnli_smollm2", {}, [0, 1, 2])  # the base model: once
    assert (key, base.seed, args) == ("base_xnli_smollm2", 0, [])


def fake_steps(monkeypatch):
    calls = []
    monkeypatch.setattr(replica, "step", lambda command, timings, key: calls.append((command, key)))
    monkeypatch.setattr(replica, "device_name", lambda: "test device")
    return calls


def test_base_runs_once_and_each_trained_method_once_per_seed(tmp_path, monkeypatch):
    calls = fake_steps(monkeypatch)
    runs = tmp_path / "runs"
    replica.main(["--models", "smollm2", "--tasks", "belebele", "--set", f"out_dir={runs}",
                  "--out", str(tmp_path / "out")])
    trains = [key for _, key in calls if key.endswith("/train")]
    evals = {key: command for command, key in calls if key.endswith("/evaluate")}
    assert len(trains) == 12 and len(evals) == 13
    assert "base_belebele_smollm2/train" not in trains
    base = evals["base_belebele_smollm2/evaluate"]
    assert "--seed" not in base and "--no-base" not in base
    seed2 = evals["seed2/lora_belebele_smollm2/evaluate"]
    assert seed2[seed2.index("--seed") + 1] == "2" and "--no-base" in seed2
    out_dirs = [seed2[i + 1] for i, a in enumerate(seed2) if a == "--out_dir"]
    assert out_dirs[-1] == str(runs / "seed2")  # the last --out_dir is the one argparse keeps
    timings = json.loads((tmp_path / "out" / "timings.json").read_text())
    assert timings["devices"] == ["test device"] and timings["protocol"] == replica.PROTOCOL


def test_timings_of_the_old_protocol_are_kept_apart(tmp_path, monkeypatch):
    fake_steps(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    (out / "timings.json").write_text(json.dumps({"device": "old", "base_belebele_smollm2/evaluate": 101.0}))
    def step(command, timings, key):
        timings[key] = timings.get(key, 0) + 1

    monkeypatch.setattr(replica, "step", step)
    for _ in range(2):  # the second run resumes: adds to this protocol's times, not to the old ones
        replica.main(["--models", "smollm2", "--tasks", "belebele", "--methods", "base",
                      "--set", f"out_dir={tmp_path / 'runs'}", "--out", str(out)])
    timings = json.loads((out / "timings.json").read_text())
    assert timings["before"] == {"device": "old", "base_belebele_smollm2/evaluate": 101.0}
    assert timings["base_belebele_smollm2/evaluate"] == 2


def test_resuming_skips_finished_adapters_and_current_results(tmp_path, monkeypatch):
    calls = fake_steps(monkeypatch)
    runs = tmp_path / "runs"
    (_, done, _), = [j for j in replica.seed_runs("lora_belebele_smollm2", {"out_dir": str(runs)}, [1])]
    adapter = done.run_dir / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter.safetensors").write_bytes(b"weights")
    languages = done.eval_languages
    dtype = str(C.device_and_dtype(done)[1]).removeprefix("torch.")  # what evaluate.py would compute in here
    results = dict(task="belebele", metric="accuracy", config=dataclasses.asdict(done), languages=languages,
                   fit_languages=None, dtype=dtype,
                   adapter_sha256=data.file_sha256(adapter / "adapter.safetensors"),
                   rows={"lora": {lang: {"accuracy": 25.0} for lang in languages}})
    (done.run_dir / "results.json").write_text(json.dumps(results))
    assert replica.evaluated(done)
    replica.main(["--models", "smollm2", "--tasks", "belebele", "--methods", "lora", "--seeds", "0", "1", "2",
                  "--set", f"out_dir={runs}", "--out", str(tmp_path / "out")])
    keys = [key for _, key in calls]
    assert keys == ["lora_belebele_smollm2/train", "lora_belebele_smollm2/evaluate",
                    "seed2/lora_belebele_smollm2/train", "seed2/lora_belebele_smollm2/evaluate"]
    # anything that makes the result stale sends it back to evaluate.py (which resumes per language)
    (adapter / "adapter.safetensors").write_bytes(b"retrained")
    assert not replica.evaluated(done)
    (adapter / "adapter.safetensors").write_bytes(b"weights")
    assert not replica.evaluated(dataclasses.replace(done, eval_samples=50))
    assert not replica.evaluated(dataclasses.replace(done, eval_languages=["eng_Latn"]))
    (done.run_dir / "results.json").write_text(json.dumps(dict(results, dtype="float16")))  # another machine's
    assert not replica.evaluated(done)


def test_timings_sum_over_resumes():
    timings = {}
    for _ in range(2):
        replica.step([sys.executable, "-c", "import time; time.sleep(0.2)"], timings, "x/evaluate")
    assert timings["x/evaluate"] >= 0.4
    with pytest.raises(SystemExit, match="failed"):
        replica.step([sys.executable, "-c", "raise SystemExit(1)"], timings, "y/evaluate")



def test_plan_prices_what_is_left_at_the_median_measured_on_the_same_model_and_task(tmp_path, shared_data):
    runs = tmp_path / "runs"
    jobs = [j for name in ("base_belebele_smollm2", "lora_belebele_smollm2", "lora_xnli_smollm2")
            for j in replica.seed_runs(name, {"out_dir": str(runs)}, [0, 1])]
    configs = {key: cfg for name in ("base_belebele_smollm2", "lora_belebele_smollm2", "lora_xnli_smollm2",
                                     "base_xnli_smollm2") for key, cfg, _ in replica.seed_runs(name, {"out_dir": str(runs)}, [0, 1])}
    def cached(spec, row, lang, seconds, part=1.0):  # seconds for `part` of the language's whole sample
        path = runs / spec / "eval" / row / f"{lang}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        n = round(part * replica.sample_size(configs[spec], lang))
        path.write_text(json.dumps(dict(language=lang, seconds=seconds * n / replica.sample_size(configs[spec], lang),
                                        n=n)))
    # belebele: English measured three times (median 20), German once (40); one training (100) and an
    # unrelated model's (not counted)
    cached("base_belebele_smollm2", "base", "eng_Latn", 10.0)
    cached("base_belebele_smollm2", "base", "deu_Latn", 40.0)
    cached("lora_belebele_smollm2", "lora", "eng_Latn", 20.0)
    cached("seed1/lora_belebele_smollm2", "lora", "eng_Latn", 90.0)
    (runs / "lora_belebele_smollm2" / "adapter").mkdir(parents=True)
    (runs / "lora_belebele_smollm2" / "adapter" / "adapter_config.json").write_text("{}")
    timings = {"devices": ["cpu x"], "lora_belebele_smollm2/train": 100.0, "lora_belebele_gemma3/train": 7.0,
               "before": {"lora_xnli_smollm2/train": 5.0}}
    rows, text = replica.plan(jobs, runs, timings)
    left = {key: seconds for key, _, seconds, _ in rows}
    floor = {key: seconds for key, _, _, seconds in rows}
    assert left["base_belebele_smollm2"] == 0.0  # both languages cached (results.json missing: not finished)
    assert left["lora_belebele_smollm2"] == pytest.approx(40.0)  # trained, German to do
    assert left["seed1/lora_belebele_smollm2"] == pytest.approx(100.0 + 40.0)  # to train, English cached
    assert left["lora_xnli_smollm2"] is None and left["seed1/lora_xnli_smollm2"] is None  # nothing measured
    assert floor["lora_xnli_smollm2"] == 0.0 and floor["seed1/lora_belebele_smollm2"] == pytest.approx(140.0)
    states = {key: state for key, state, _, _ in rows}
    assert states["seed1/lora_belebele_smollm2"] == "to train, 1/2 languages evaluated"
    # 180 s; the base run still has its summary to write
    assert "5 of 5 runs to do: 0.1 h" in text and "cpu x" in text
    assert "plus 2 run(s) with a part not measured" in text and "at least 0.0 h more" in text
    assert "| `lora_xnli_smollm2` | to train, 0/15 languages evaluated | ? |" in text
    cached("seed1/lora_belebele_smollm2", "lora", "deu_Latn", 60.0)  # German's median is now 50
    left = {key: seconds for key, _, seconds, _ in replica.plan(jobs, runs, timings)[0]}
    assert left["lora_belebele_smollm2"] == pytest.approx(50.0) and left["seed1/lora_belebele_smollm2"] == pytest.approx(100.0)
    # XNLI: the base model's English measured (3,600 s), training not: a floor, not a price
    cached("base_xnli_smollm2", "base", "en", 3600.0)
    rows, text = replica.plan(jobs, runs, timings)
    left = {key: (seconds, floor) for key, _, seconds, floor in rows}
    assert left["lora_xnli_smollm2"] == (None, pytest.approx(3600.0)) and left["seed1/lora_xnli_smollm2"] == (None, pytest.approx(3600.0))
    assert "| `lora_xnli_smollm2` | to train, 0/15 languages evaluated | ≥ 1.0 |" in text and "at least 2.0 h more" in text
    # a language scored on a quarter of the sample evaluate.py now draws grows: three quarters are left,
    # at its seconds per example (German: 40 and 60 s for the whole sample; this one 120 s per whole)
    cached("lora_belebele_smollm2", "lora", "deu_Latn", 120.0, part=0.25)
    rows, text = replica.plan(jobs, runs, timings)
    left = {key: seconds for key, _, seconds, _ in rows}
    assert left["lora_belebele_smollm2"] == pytest.approx(60.0 * 0.75, rel=0.02)  # median of 40, 60, 120
    assert "| `lora_belebele_smollm2` | 1/2 languages evaluated (1 of a smaller sample, to grow) |" in text

# --- finished runs as evaluate.py leaves them -------------------------------------------------------

def fake_run(runs_dir, spec, method, task, per_language, seed=0):
    """results.json and eval/<row>/<lang>.json of a finished run; per_language {lang: 0/1 per
    question} (accuracy: correct; XQuAD: an F1 of 0 or 100), the same question ids in every language."""
    metric = "f1" if task == "xquad" else "accuracy"
    folder = runs_dir / spec
    means = {}
    for lang, values in per_language.items():
        preds = [dict(id=f"q{i:03d}", **({"f1": 100.0 * v} if metric == "f1" else {"correct": bool(v)}))
                 for i, v in enumerate(values)]
        path = folder / "eval" / method / f"{lang}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(language=lang, n=len(preds), predictions=preds)))
        means[lang] = 100.0 * float(np.mean(values))
    config = dict(name=spec.split("/")[-1], method=method, model="m", task=task, seed=seed, eval_seed=0,
                  out_dir=str(folder.parent))
    (folder / "results.json").write_text(json.dumps(dict(
        task=task, metric=metric, languages=list(per_language), config=config,
        rows={method: {lang: {metric: m} for lang, m in means.items()}})))


def pattern(rule, n=60):
    return [int(rule(i)) for i in range(n)]


def test_headline_pools_seeds_and_matches_report_compare(tmp_path):
    base = pattern(lambda i: i % 3 == 0)
    fake_run(tmp_path, "base_xnli_smollm2", "base", "xnli", dict(en=base, de=base, sw=base))
    seeds = {0: (lambda i: i % 2 == 0), 1: (lambda i: i % 4 == 0), 2: (lambda i: i % 5 != 1)}
    for seed, rule in seeds.items():
        spec = "lora_xnli_smollm2" if seed == 0 else f"seed{seed}/lora_xnli_smollm2"
        de = pattern(rule)
        fake_run(tmp_path, spec, "lora", "xnli", dict(en=pattern(lambda i: True), de=de, sw=base), seed=seed)
    table, comparisons = replica.headline(tmp_path, ["smollm2"], ["xnli"], n_resamples=N_RESAMPLES)
    cell = table["smollm2"]["xnli"]
    lora = cell["methods"]["lora"]
    per_seed = [(100 * np.mean(pattern(rule)) + 100 * np.mean(base)) / 2 for rule in seeds.values()]
    assert lora["n_seeds"] == 3 and lora["seeds"] == [0, 1, 2]
    assert lora["non_en"] == pytest.approx(np.mean(per_seed)) and lora["non_en_per_seed"] == pytest.approx(per_seed)
    assert lora["non_en_sd"] == pytest.approx(np.std(per_seed, ddof=1))
    assert lora["en"] == 100.0 and lora["en_sd"] == 0.0
    assert cell["methods"]["base"]["n_seeds"] == 1 and cell["methods"]["base"]["non_en_sd"] is None
    # the change against the base model: per question, the mean over seeds minus base, averaged over de and sw
    pooled_de = np.mean([pattern(rule) for rule in seeds.values()], 0)
    per_question = 100 * ((pooled_de - base) + 0) / 2
    assert lora["non_en_vs_base"] == pytest.approx(per_question.mean())
    assert lora["non_en_vs_base_se"] == pytest.approx(per_question.std(ddof=1) / math.sqrt(60))
    direct = report.compare(tmp_path, ["base_xnli_smollm2", "lora_xnli_smollm2", "seed1/lora_xnli_smollm2",
                                       "seed2/lora_xnli_smollm2"], n_resamples=N_RESAMPLES)
    diff = direct["entries"][1]["difference"]["non_en"]
    assert (lora["non_en_vs_base"], lora["non_en_vs_base_se"], lora["non_en_vs_base_ci"]) == \
        (diff["mean"], diff["se"], diff["ci"])
    assert comparisons["smollm2", "xnli"]["entries"][1]["runs"] == direct["entries"][1]["runs"]
    # 60 questions: the s.e. is over XNLI's 2-point target, and the table says so
    assert lora["non_en_vs_base_se"] > 2 and lora["se_over_target"]
    text = replica.render_headline(table)
    assert f"± **{lora['non_en_vs_base_se']:.1f} > 2.0**" in text
    assert f"{lora['non_en']:.1f} (sd {lora['non_en_sd']:.1f})" in text
    # over examples and seeds: the examples' s.e. and the seed sd / sqrt(3) in quadrature, a Student t
    # interval with Welch-Satterthwaite's degrees of freedom (here (a + b)^2 / (b^2 / 2))
    a, b = lora["non_en_vs_base_se"] ** 2, np.var(per_seed, ddof=1) / 3
    total = lora["non_en_vs_base_diff"]
    assert total["total_se"] == pytest.approx(math.sqrt(a + b)) and total["df"] == pytest.approx((a + b) ** 2 / (b * b / 2))
    half = scipy.stats.t.ppf(0.975, total["df"]) * math.sqrt(a + b)
    assert total["total_ci"] == pytest.approx([lora["non_en_vs_base"] - half, lora["non_en_vs_base"] + half])
    assert f"± {total['total_se']:.1f} {stats.fmt_ci(total['total_ci'])} |" in text


def test_headline_leaves_out_runs_whose_examples_do_not_load(tmp_path):
    base = pattern(lambda i: i % 3 == 0)
    fake_run(tmp_path, "base_xnli_smollm2", "base", "xnli", dict(en=base, de=base))
    fake_run(tmp_path, "lora_xnli_smollm2", "lora", "xnli", dict(en=base, de=base))
    fake_run(tmp_path, "seed1/lora_xnli_smollm2", "lora", "xnli", dict(en=base, de=base), seed=1)
    (tmp_path / "seed1/lora_xnli_smollm2/eval/lora/de.json").unlink()
    table, _ = replica.headline(tmp_path, ["smollm2"], ["xnli"], n_resamples=N_RESAMPLES)
    cell = table["smollm2"]["xnli"]
    assert cell["methods"]["lora"]["n_seeds"] == 1
    assert any("seed1/lora_xnli_smollm2" in note and "missing" in note for note in cell["notes"])


def test_a_run_grown_past_the_others_is_compared_on_the_examples_all_scored(tmp_path):
    # the base model grown to 90 questions while the trained runs hold the first 60: the headline and the
    # findings are those of a base run of those 60, and both say what was used
    patterns = dict(lora={"*": lambda i: i % 6 == 0, "en": lambda i: True}, adapter={"*": lambda i: i % 3 != 2},
                    soft_prompt={"*": third})
    grown, alone = tmp_path / "grown", tmp_path / "alone"
    for runs_dir, n in ((grown, 90), (alone, 60)):
        scenario(runs_dir, patterns)
        fake_run(runs_dir, "base_xnli_smollm2", "base", "xnli", {l: pattern(third, n) for l in ("en", "de", "sw")})
    marks, want = judge(grown), judge(alone)
    table, _ = replica.headline(grown, ["smollm2"], ["xnli"], n_resamples=N_RESAMPLES)
    expected, _ = replica.headline(alone, ["smollm2"], ["xnli"], n_resamples=N_RESAMPLES)
    cell = table["smollm2"]["xnli"]
    assert cell["n_examples"] == {"en": 60, "de": 60, "sw": 60}
    assert cell["methods"] == expected["smollm2"]["xnli"]["methods"]
    assert ("Compared on the 60 examples per language that every run scored; runs that scored more (the rest not "
            "used here): `base_xnli_smollm2:base` 90 per language in 3 languages.") in cell["notes"]
    assert not expected["smollm2"]["xnli"]["notes"]
    for key, mark in marks.items():
        assert mark["verdict"] == want[key]["verdict"], key
    # the soft prompt against the base model is narrowed, against LLaMA-Adapter (both at 60) it is not
    common = " (on the 60 examples per language that every run compared scored)"
    before, after = want["soft_prompt_low_resource"]["numbers"].split(", soft prompt − LLaMA-Adapter ")
    assert marks["soft_prompt_low_resource"]["numbers"] == f"{before}{common}, soft prompt − LLaMA-Adapter {after}"
    # prefix over LoRA leaves the base model out: its runs all scored the same 60, nothing narrowed
    assert marks["prefix_over_lora"]["numbers"] == want["prefix_over_lora"]["numbers"]
    assert common not in marks["prefix_over_lora"]["numbers"]


# --- the findings' rules -----------------------------------------------------------------------------

def scenario(runs_dir, patterns, task="xnli", languages=("en", "de", "sw")):
    """One run per method; patterns {method: {lang or "*": rule}} ("*": every language not named)."""
    for method, rules in patterns.items():
        per_language = {l: pattern(rules.get(l, rules["*"])) for l in languages}
        fake_run(runs_dir, f"{method}_{task}_smollm2", method, task, per_language)


def judge(runs_dir, task="xnli"):
    table, _ = replica.headline(runs_dir, ["smollm2"], [task], n_resamples=N_RESAMPLES)
    return replica.findings(table, runs_dir, N_RESAMPLES)["smollm2"][task]


def third(i):
    return i % 3 == 0


def test_findings_hold(tmp_path):
    scenario(tmp_path, dict(
        base={"*": third},
        lora={"*": lambda i: i % 6 == 0, "en": lambda i: True},  # learns English, loses the others
        prefix={"*": lambda i: i % 3 != 2},
        adapter={"*": third},
        soft_prompt={"*": third, "sw": lambda i: i % 3 != 2}))  # as good as prefix tuning on Swahili
    marks = judge(tmp_path)
    assert {k: m["verdict"] for k, m in marks.items()} == dict(
        prefix_over_lora=replica.HOLDS, soft_prompt_low_resource=replica.HOLDS, lora_degrades=replica.HOLDS)
    assert marks["prefix_over_lora"]["best"] == "prefix"
    assert marks["prefix_over_lora"]["differences"]["prefix"]["mean"] == pytest.approx(100 * (40 / 60 - 10 / 60))
    assert marks["soft_prompt_low_resource"]["low_resource"] == ["sw"]
    assert marks["soft_prompt_low_resource"]["vs_best_prefix"]["mean"] == 0.0
    assert marks["lora_degrades"]["difference"]["mean"] == pytest.approx(100 * (10 / 60 - 20 / 60))
    text = replica.render_findings({"smollm2": {"xnli": marks}})
    assert ("| LoRA degrading non-English | smollm2 | xnli | **holds** (provisional, over examples only: LoRA r=4 "
            "has one seed) | LoRA − base non-English -16.7") in text
    assert all(m["basis"].startswith("provisional") for m in marks.values())


def seeded(runs_dir, method, rules, task="xnli", languages=("en", "de", "sw")):
    """One run of `method` per rule, seeds 0, 1, ...; each rule {lang or "*": rule} as in scenario."""
    for seed, rule in enumerate(rules):
        spec = f"{method}_{task}_smollm2" if seed == 0 else f"seed{seed}/{method}_{task}_smollm2"
        fake_run(runs_dir, spec, method, task, {l: pattern(rule.get(l, rule["*"])) for l in languages}, seed=seed)


def test_findings_count_seeds_where_every_method_has_two_or_more(tmp_path):
    # LoRA loses the non-English questions on every seed alike; two prefix-tuning seeds gain much
    # and one gains nothing: the mean gain over LoRA is clear over examples, not over seeds
    scenario(tmp_path, dict(base={"*": third}))
    seeded(tmp_path, "lora", [{"*": lambda i: i % 6 == 0}, {"*": lambda i: i % 6 == 1}, {"*": lambda i: i % 6 == 2}])
    seeded(tmp_path, "prefix", [{"*": lambda i: i % 5 != 4}, {"*": lambda i: i % 5 != 3}, {"*": lambda i: i % 6 == 3}])
    marks = judge(tmp_path)
    over = marks["prefix_over_lora"]
    diff = over["differences"]["prefix"]
    assert diff["ci"][0] > 0 and diff["total_ci"][0] < 0 < diff["total_ci"][1]  # examples: holds; seeds: spans 0
    assert over["verdict"] == replica.CANNOT_TELL and over["basis"] == "over examples and seeds"
    assert "more seeds would tell more" in over["numbers"] and "over examples and seeds ±" in over["numbers"]
    # LoRA below the base model on every seed: holds over both
    assert marks["lora_degrades"]["verdict"] == replica.HOLDS
    assert marks["lora_degrades"]["difference"]["total_ci"][1] < 0
    # the same prefix-tuning seeds, all three gaining: holds over both
    seeded(tmp_path, "prefix", [{"*": lambda i: i % 5 != 4}, {"*": lambda i: i % 5 != 3}, {"*": lambda i: i % 5 != 2}])
    over = judge(tmp_path)["prefix_over_lora"]
    assert over["verdict"] == replica.HOLDS and over["basis"] == "over examples and seeds"
    # two LoRA seeds: counted, but the verdict stays provisional until the third
    shutil.rmtree(tmp_path / "seed2" / "lora_xnli_smollm2")
    over = judge(tmp_path)["prefix_over_lora"]
    assert over["basis"] == "over examples and seeds; provisional: LoRA r=4 has 2 seeds, of 3"
    assert over["differences"]["prefix"]["total_ci"] is not None


def test_findings_do_not_hold(tmp_path):
    scenario(tmp_path, dict(
        base={"*": third},
        lora={"*": lambda i: i % 3 != 2},
        prefix={"*": third},
        adapter={"*": third},
        soft_prompt={"*": third, "sw": lambda i: False}))
    marks = judge(tmp_path)
    assert {k: m["verdict"] for k, m in marks.items()} == dict(
        prefix_over_lora=replica.DOES_NOT_HOLD, soft_prompt_low_resource=replica.DOES_NOT_HOLD,
        lora_degrades=replica.DOES_NOT_HOLD)


def test_findings_cannot_tell_when_differences_are_within_noise(tmp_path):
    def flip(*pairs):  # the base pattern with question a dropped and question b added, for each pair
        drop, add = {a for a, _ in pairs}, {b for _, b in pairs}
        return lambda i: (third(i) and i not in drop) or i in add

    scenario(tmp_path, dict(base={"*": third}, lora={"*": flip((0, 1))}, prefix={"*": flip((3, 4))},
                            adapter={"*": third}, soft_prompt={"*": third, "sw": flip((6, 7))}))
    marks = judge(tmp_path)
    assert {k: m["verdict"] for k, m in marks.items()} == dict(
        prefix_over_lora=replica.CANNOT_TELL, soft_prompt_low_resource=replica.CANNOT_TELL,
        lora_degrades=replica.CANNOT_TELL)
    assert "over the target 2.0: too few examples" in marks["lora_degrades"]["numbers"]


def test_findings_cannot_tell_without_low_resource_languages_or_runs(tmp_path):
    scenario(tmp_path, dict(base={"*": third}, lora={"*": lambda i: i % 6 == 0},
                            prefix={"*": lambda i: i % 3 != 2}, soft_prompt={"*": lambda i: True}),
             task="xquad", languages=("en", "de"))
    marks = judge(tmp_path, "xquad")
    assert marks["prefix_over_lora"]["verdict"] == replica.HOLDS  # LLaMA-Adapter not run: prefix tuning alone
    assert list(marks["prefix_over_lora"]["differences"]) == ["prefix"]
    assert marks["soft_prompt_low_resource"]["verdict"] == replica.CANNOT_TELL
    assert "no low-resource language" in marks["soft_prompt_low_resource"]["numbers"]
    scenario(tmp_path, dict(base={"*": third}, soft_prompt={"*": third}), task="belebele",
             languages=("eng_Latn", "deu_Latn"))
    marks = judge(tmp_path, "belebele")
    assert marks["prefix_over_lora"] == dict(verdict=replica.CANNOT_TELL,
                                             numbers="not run yet: LoRA r=4, Prefix tuning, LLaMA-Adapter")
    assert marks["lora_degrades"]["verdict"] == replica.CANNOT_TELL


def test_verdict_rule_and_low_resource_numbers_are_report_compares(tmp_path):
    assert replica.verdict([0.1, 3.0]) == replica.HOLDS and replica.verdict([-3.0, -0.1]) == replica.DOES_NOT_HOLD
    assert replica.verdict([-1.0, 1.0]) == replica.CANNOT_TELL and replica.verdict(None) == replica.CANNOT_TELL
    assert replica.verdict([-3.0, -0.1], above_holds=False) == replica.HOLDS
    assert replica.verdict([0.0, 2.0]) == replica.CANNOT_TELL  # an interval touching 0 does not exclude it
    # two low-resource languages (sw, ur) among four: the finding reads compare's resource:low average
    scenario(tmp_path, dict(base={"*": third}, prefix={"*": third, "ur": lambda i: i % 2 == 0},
                            soft_prompt={"*": third, "sw": lambda i: i % 3 != 2}), languages=("en", "de", "sw", "ur"))
    marks = judge(tmp_path)["soft_prompt_low_resource"]
    assert marks["low_resource"] == ["sw", "ur"] and marks["best"] == "prefix"
    direct = report.compare(tmp_path, ["base_xnli_smollm2", "soft_prompt_xnli_smollm2"], n_resamples=N_RESAMPLES)
    assert direct["members"]["resource:low"] == ["sw", "ur"] and direct["labels"]["resource:low"] == "low-resource (2)"
    assert marks["vs_base"] == direct["entries"][1]["difference"]["resource:low"]
    assert marks["vs_base"]["mean"] == pytest.approx(100 * (40 / 60 - 20 / 60) / 2)  # sw gains, ur does not
    against = report.compare(tmp_path, ["prefix_xnli_smollm2", "soft_prompt_xnli_smollm2"], n_resamples=N_RESAMPLES)
    assert marks["vs_best_prefix"] == against["entries"][1]["difference"]["resource:low"]
    assert marks["vs_best_prefix"]["mean"] == pytest.approx(100 * ((40 - 20) / 60 - (30 - 20) / 60) / 2)

def test_findings_compare_on_the_headline_languages_only(tmp_path):
    # LLaMA-Adapter was not evaluated on sw, so the headline has en, de, ur. On ur the soft prompt equals
    # prefix tuning; on sw (left out) it is far behind: the verdict must not read sw.
    scenario(tmp_path, dict(base={"*": third}, lora={"*": third},
                            prefix={"*": third, "ur": lambda i: i % 3 != 2, "sw": lambda i: True},
                            soft_prompt={"*": third, "ur": lambda i: i % 3 != 2, "sw": lambda i: False}),
             languages=("en", "de", "sw", "ur"))
    fake_run(tmp_path, "adapter_xnli_smollm2", "adapter", "xnli", {l: pattern(third) for l in ("en", "de", "ur")})
    table, _ = replica.headline(tmp_path, ["smollm2"], ["xnli"], n_resamples=N_RESAMPLES)
    assert table["smollm2"]["xnli"]["languages"] == ["en", "de", "ur"]
    marks = replica.findings(table, tmp_path, N_RESAMPLES)["smollm2"]["xnli"]
    low = marks["soft_prompt_low_resource"]
    assert low["low_resource"] == ["ur"] and low["vs_best_prefix"]["mean"] == pytest.approx(0.0)
    assert low["vs_base"]["mean"] == pytest.approx(100 * (40 / 60 - 20 / 60)) and low["verdict"] == replica.HOLDS
    # prefix tuning against LoRA on de and ur, the languages whose non-English average chose it
    assert marks["prefix_over_lora"]["differences"]["prefix"]["mean"] == pytest.approx(100 * (40 / 60 - 20 / 60) / 2)
    with pytest.raises(ValueError, match="do not all score sw"):
        report.compare(tmp_path, ["base_xnli_smollm2", "adapter_xnli_smollm2"], languages=["en", "sw"])


def test_without_english_every_language_is_non_english(tmp_path):
    scenario(tmp_path, dict(base={"*": third}, lora={"*": lambda i: i % 6 == 0},
                            prefix={"*": lambda i: i % 3 != 2}), languages=("de", "sw"))
    table, _ = replica.headline(tmp_path, ["smollm2"], ["xnli"], n_resamples=N_RESAMPLES)
    rows = table["smollm2"]["xnli"]["methods"]
    assert rows["lora"]["non_en"] == rows["lora"]["avg"] == pytest.approx(100 * 10 / 60) and rows["lora"]["en"] is None
    assert rows["lora"]["non_en_vs_base"] == pytest.approx(100 * (10 - 20) / 60)
    marks = replica.findings(table, tmp_path, N_RESAMPLES)["smollm2"]["xnli"]
    assert marks["prefix_over_lora"]["verdict"] == replica.HOLDS and marks["lora_degrades"]["verdict"] == replica.HOLDS
    scenario(tmp_path / "en", dict(base={"*": third}, lora={"*": third}, prefix={"*": third}), languages=("en",))
    table, _ = replica.headline(tmp_path / "en", ["smollm2"], ["xnli"], n_resamples=N_RESAMPLES)
    marks = replica.findings(table, tmp_path / "en", N_RESAMPLES)["smollm2"]["xnli"]
    assert marks["prefix_over_lora"]["verdict"] == marks["lora_degrades"]["verdict"] == replica.CANNOT_TELL
    assert "no non-English language evaluated (en)" in marks["lora_degrades"]["numbers"]
