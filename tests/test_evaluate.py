"""evaluate.choice_logprobs against a plain per-choice forward pass on a tiny model."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import evaluate


def reference(model, tokenizer, prompt, choice, choices, max_length):
    c = tokenizer(choice, add_special_tokens=False)["input_ids"]
    longest = max(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in choices)
    p = data.prompt_ids(tokenizer, prompt, max_length - longest)  # one cut per example, for its longest option
    logits = model(input_ids=torch.tensor([p + c])).logits[0, len(p) - 1:len(p) + len(c) - 1].float()
    return F.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).sum().item()


def one_token_strings(tokenizer, n):
    out = []
    for i in range(40, 400):
        s = tokenizer.decode([i])
        if s.strip() and tokenizer(s, add_special_tokens=False)["input_ids"] == [i]:
            out.append(s)
        if len(out) == n:
            return out
    raise AssertionError("the tiny tokenizer has too few single-token strings")


@pytest.mark.parametrize("kind", ["one_token", "multi_token", "mixed"])
def test_choice_logprobs_equal_a_forward_per_choice(tiny_model_dir, kind):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    singles = one_token_strings(tokenizer, 4)
    multis = [" the river flows", " a person makes music", " contradiction neutral", " sea"]
    assert all(len(tokenizer(m, add_special_tokens=False)["input_ids"]) > 1 for m in multis[:3])
    prompts = ["Premise: a man plays guitar. Answer:", "Context: The river flows to the sea. Question: Where?",
               "Hypothesis: a person makes music, a man plays guitar, the river flows to the sea. Answer:"]
    choices = {"one_token": [singles] * 3, "multi_token": [multis] * 3,
               "mixed": [singles, multis, singles[:2] + multis[:2]]}[kind]
    max_length = 24  # the third prompt is cut from the left, as training cuts it
    with torch.no_grad():
        got = evaluate.choice_logprobs(model, tokenizer, prompts, choices, batch_size=3, device="cpu",
                                       max_length=max_length)
        want = [[reference(model, tokenizer, p, c, cs, max_length) for c in cs] for p, cs in zip(prompts, choices)]
    assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=1e-5), (got, want)
    assert len({tuple(g) for g in got}) == 3  # the prompts really differ in their scores


def test_pad_batch_pads_right_or_left():
    from train import pad_batch
    ids, mask = pad_batch([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], 0, left=True)  # generation: every row ends at the last column
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


TASKS = {"xnli": {}, "xquad": dict(task="xquad", eval_subset="articles_32_47", eval_split=None, max_new_tokens=3,
                                   do_sample=False)}


@pytest.mark.parametrize("task", TASKS)
def test_a_grown_sample_scores_only_the_examples_it_lacks(tiny_model_dir, shared_data, tmp_path, monkeypatch, task):
    """eval_samples 4 -> 9 reuses the 4 records and scores the rest; the result is what a fresh evaluation
    of the larger sample gives. Any other changed setting is still refused without --overwrite."""
    import json

    import config as C
    from test_pipeline import runs_file

    def cfg_for(folder, **extra):
        return C.get_run("tiny", path=runs_file(tmp_path / folder, tiny_model_dir, shared_data, **dict(
            dict(method="base", eval_languages=["en"], eval_samples=4, out_dir=str(tmp_path / folder / "runs")),
            **TASKS[task], **extra)))

    scored = []
    name = "choice_logprobs" if task == "xnli" else "generate"
    score = getattr(evaluate, name)
    monkeypatch.setattr(evaluate, name, lambda model, tokenizer, prompts, *a, **k:
                        scored.append(len(prompts)) or score(model, tokenizer, prompts, *a, **k))
    evaluate.run(cfg_for("grow"))
    assert scored == [4]
    small = json.loads((cfg_for("grow").run_dir / "eval" / "base" / "en.json").read_text())
    evaluate.run(cfg_for("grow", eval_samples=9))
    assert scored == [4, 5]
    grown = json.loads((cfg_for("grow").run_dir / "eval" / "base" / "en.json").read_text())
    evaluate.run(cfg_for("fresh", eval_samples=9))
    assert scored == [4, 5, 9]
    fresh = json.loads((cfg_for("fresh").run_dir / "eval" / "base" / "en.json").read_text())
    assert grown["n"] == fresh["n"] == 9 and grown["config"]["eval_samples"] == 9
    assert [r["id"] for r in grown["predictions"]] == [r["id"] for r in fresh["predictions"]]
    assert {r["id"] for r in small["predictions"]} < {r["id"] for r in grown["predictions"]}
    for g, f in zip(grown["predictions"], fresh["predictions"]):
        assert g["prediction"] == f["prediction"]
        assert g.get("logprobs") == pytest.approx(f.get("logprobs"), abs=1e-4) and g.get("f1") == f.get("f1")
    assert grown["metrics"] == pytest.approx(fresh["metrics"])
    assert grown["seconds"] > small["seconds"]  # the first part's time is counted in
    # a smaller sample, or another setting changed with it, is not a grown one
    with pytest.raises(ValueError, match="other settings"):
        evaluate.run(cfg_for("grow", eval_samples=3))
    with pytest.raises(ValueError, match="other settings"):
        evaluate.run(cfg_for("grow", eval_samples=12, eval_seed=1))
    assert scored == [4, 5, 9]


def test_a_draw_of_whole_premises_scores_them_whole_grows_and_is_a_setting(tiny_model_dir, shared_data, tmp_path):
    """eval_draw groups: eval_samples 7 scores 2 whole premises (6 rows, one per label each), 10 grows to 3
    by scoring only the third; the other way of drawing is another setting, refused without --overwrite."""
    import json

    import config as C
    from test_pipeline import runs_file

    def cfg_for(**extra):
        return C.get_run("tiny", path=runs_file(tmp_path, tiny_model_dir, shared_data, **dict(
            dict(method="base", eval_languages=["en"], eval_draw="groups", out_dir=str(tmp_path / "runs")), **extra)))

    def predictions():
        return json.loads((cfg_for().run_dir / "eval" / "base" / "en.json").read_text())["predictions"]

    def premises(records):
        out = {}
        for r in records:
            out.setdefault(r["group"], []).append(r["label"])
        return out

    evaluate.run(cfg_for(eval_samples=7))
    first = premises(predictions())
    assert len(first) == 2 and all(sorted(v) == [0, 1, 2] for v in first.values())
    evaluate.run(cfg_for(eval_samples=10))
    grown = premises(predictions())
    assert len(grown) == 3 and all(sorted(v) == [0, 1, 2] for v in grown.values()) and set(first) < set(grown)
    with pytest.raises(ValueError, match="other settings"):
        evaluate.run(cfg_for(eval_samples=10, eval_draw="rows"))
