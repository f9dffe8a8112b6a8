"""paper_results.json is self-consistent, and report.py builds tables and plots from fake runs."""
import json

import pytest

import data
import report
from config import load_runs

PAPER = report.load_paper()


def per_language_tables():
    return [t for t in PAPER.values() if t["kind"] == "per_language"]


def test_paper_tables_are_well_formed():
    runs = load_runs()
    for table in PAPER.values():
        assert table["kind"] in ("per_language", "summary"), table["id"]
        for row, values in table["rows"].items():
            assert set(values) <= set(table["columns"]), (table["id"], row)
            assert all(isinstance(v, (int, float)) for v in values.values()), (table["id"], row)
        named = table["runs"].values() if table["kind"] == "per_language" else \
            [run for cells in table["runs"].values() for run in cells.values()]
        assert set(named) <= set(runs), f"{table['id']}: runs not in runs.yaml: {set(named) - set(runs)}"
    for table in per_language_tables():
        task = data.load_task(table["task"])
        assert set(table["columns"]) - {"avg"} <= set(task.languages), table["id"]
        assert table["metric"] in ("accuracy", "f1", "em", "acc")


@pytest.mark.parametrize("table", [t for t in per_language_tables() if "avg" in t["columns"]], ids=lambda t: t["id"])
def test_printed_averages_match_their_rows(table):
    # cells are rounded to 0.1 and so is the printed average: a mean off by more is a typo
    languages = [c for c in table["columns"] if c != "avg"]
    for row, values in table["rows"].items():
        assert all(l in values for l in languages), f"{table['id']} {row}: missing cells"
        mean = sum(values[l] for l in languages) / len(languages)
        assert abs(mean - values["avg"]) <= 0.1, f"{table['id']} {row}: mean {mean:.3f} vs printed {values['avg']}"


def test_summary_tables_repeat_the_per_language_averages():
    avg = lambda tid, row: PAPER[tid]["rows"][row]["avg"]  # noqa: E731
    for row in ("base", "lora", "adapter", "prefix"):
        assert PAPER["table6"]["rows"][row]["llama3.1-8b"] == avg("table2", row)
        assert PAPER["table6"]["rows"][row]["mistral-7b"] == avg("table15", row)
    for row in ("lora", "adapter", "prefix"):
        assert PAPER["table7"]["rows"][row] == {"xnli": avg("table1", row), "xquad": avg("table2", row)}
    assert PAPER["table8"]["rows"]["layers30"]["avg"] == PAPER["table9"]["rows"]["tokens10"]["avg"] == avg("table1", "prefix")
    assert PAPER["table5"]["rows"]["full"]["avg"] == avg("table11_f1", "full")


def test_both_groupings_of_belebele_agree_on_shared_languages():
    for script, family in (("table4_script", "table4_family"), ("table17_script", "table17_family")):
        for row in PAPER[script]["rows"]:
            a, b = PAPER[script]["rows"][row], PAPER[family]["rows"][row]
            differ = {l: (a[l], b[l]) for l in set(a) & set(b) if a[l] != b[l]}
            # the paper prints Llama's Sindhi prefix score as 55.8 in one table and 55.9 in the other
            assert differ in ({}, {"snd_Arab": (55.8, 55.9)}), (script, row, differ)


def write_results(runs_dir, name, method, task, values, metric="accuracy"):
    """A results.json as evaluate.py writes it: base row plus the method's row."""
    languages = list(values)
    rows = {"base": {l: {metric: v - 10.0} for l, v in values.items()}}
    if method != "base":
        rows[method] = {l: {metric: v} for l, v in values.items()}
    doc = dict(config=dict(name=name, method=method, task=task, model="llama3.1-8b"), task=task, metric=metric,
               languages=languages, rows=rows, groups={})
    (runs_dir / name).mkdir(parents=True)
    (runs_dir / name / "results.json").write_text(json.dumps(doc))


def test_report_for_a_paper_table(tmp_path):
    runs_dir = tmp_path / "runs"
    xnli = [c for c in PAPER["table1"]["columns"] if c != "avg"]
    write_results(runs_dir, "prefix_xnli_llama8b", "prefix", "xnli", {l: 80.0 for l in xnli})
    write_results(runs_dir, "lora_xnli_llama8b", "lora", "xnli", {l: 70.0 for l in xnli})
    out = tmp_path / "reports" / "t1.md"
    report.main(["--table", "table1", "table7", "--runs-dir", str(runs_dir), "--out", str(out)])
    text = out.read_text()

    # paper: prefix en 93.9, avg 78.7; ours 80.0 everywhere
    prefix_line = next(l for l in text.splitlines() if l.startswith("| Prefix tuning |"))
    assert "80.0 <sub>(93.9, -13.9)</sub>" in prefix_line
    assert prefix_line.endswith("80.0 <sub>(78.7, +1.3)</sub> |")
    # no base run: the base row is the base model evaluated beside the first finished run (lora: 70 - 10)
    base_line = next(l for l in text.splitlines() if l.startswith("| Base model |"))
    assert base_line.startswith("| Base model | 60.0 <sub>(53.8, +6.2)</sub> | 60.0 <sub>(48.0, +12.0)</sub> |")
    soft_line = next(l for l in text.splitlines() if l.startswith("| Soft prompt |"))
    assert "- <sub>(84.3)</sub>" in soft_line
    # missing runs are listed, finished ones are not
    assert "- `soft_prompt_xnli_llama8b`" in text and "- `adapter_xquad_llama8b`" in text
    assert "- `prefix_xnli_llama8b`" not in text
    # grouped tables: Latin-script languages have a paper mean and ours
    assert "By script" in text and "By family" in text
    latin = [l for l in xnli if data.LANGUAGES[l]["script"] == "Latn"]
    paper_latin = sum(PAPER["table1"]["rows"]["prefix"][l] for l in latin) / len(latin)
    assert report.fmt_cell(80.0, paper_latin, printed=False) in text
    # summary table 7: prefix xnli is ours 80.0 vs the paper's 78.7, xquad is missing
    t7 = text[text.index("Table 7"):]
    row = next(l for l in t7.splitlines() if l.startswith("| Prefix tuning |"))
    assert row == "| Prefix tuning | 1.23M | 80.0 <sub>(78.7, +1.3)</sub> | - <sub>(78.1)</sub> |"
    for png in ("table1_bars.png", "table1_heatmap.png", "table7_bars.png"):
        path = out.parent / png
        assert path.is_file() and path.stat().st_size > 1000, png
        assert f"]({png})" in text


def test_report_for_named_runs_finds_the_paper_numbers(tmp_path):
    runs_dir = tmp_path / "runs"
    write_results(runs_dir, "adapter_belebele_llama8b", "adapter", "belebele",
                  {"kir_Cyrl": 61.5, "rus_Cyrl": 90.0, "eng_Latn": 92.0})
    out = tmp_path / "r.md"
    report.main(["--runs", "adapter_belebele_llama8b", "nope_xnli_llama8b", "--runs-dir", str(runs_dir),
                 "--out", str(out)])
    text = out.read_text()
    line = next(l for l in text.splitlines() if l.startswith("| LLaMA-Adapter |"))
    # kir 60.5 and rus 87.7 in the paper (Table 4); English has no printed number
    assert line == ("| LLaMA-Adapter | 61.5 <sub>(60.5, +1.0)</sub> | 90.0 <sub>(87.7, +2.3)</sub> | 92.0 | "
                    "81.2 |")
    assert "- `nope_xnli_llama8b`" in text
    assert (tmp_path / "belebele_llama3_1-8b_heatmap.png").stat().st_size > 1000
