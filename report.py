"""Our results next to the paper's: Markdown tables, grouped tables and PNG plots.

    python report.py --table table1                    # the runs behind one table of the paper
    python report.py --all                             # every table of paper_results.json
    python report.py --runs prefix_xnli_llama8b lora_xnli_llama8b   # any runs, by task and model
    python report.py --compare base_xnli_llama8b lora_xnli_llama8b prefix_xnli_llama8b   # statistics
    python report.py --compare lora_xnli_llama8b       # one run: its adapter row against its base row

Reads each finished run's runs/<name>/results.json (written by evaluate.py) and the paper's
numbers from paper_results.json, and writes reports/<name>.md with PNGs beside it. A cell reads
"ours (paper, ours - paper)". Runs without results.json are listed at the top, not fatal; their
rows show the paper's numbers alone.

Which row of a run's results: the paper's "base" row is the base run's `base` row (or, when that
run is missing, the `base` row any other run of the table evaluated beside its adapter); every
other row is the run's trained method. Averages are over the table's languages and are shown only
when a run has all of them. Bars carry +-1 s.e. over examples where eval/<row>/<lang>.json exist.

--compare tests differences on the same examples: every run (RUN, or RUN:ROW for another row of its
results) against the first, per language and per average, with the paired standard error and a
paired bootstrap confidence interval. Runs whose saved configs differ only in seed are pooled into
one entry: per example the mean over seeds, with the spread across seeds beside it. Runs scored on
different samples are refused, unless --common-examples narrows every run to the examples all of them
scored (per language; e.g. a run whose sample is growing against runs at the smaller size), and says so.
"""
import argparse
import functools
import json
import math
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import config as C  # noqa: E402
import data  # noqa: E402
import stats  # noqa: E402

ROOT = Path(__file__).resolve().parent
PAPER_FILE = ROOT / "paper_results.json"
METHOD_NAMES = {"base": "Base model", "soft_prompt": "Soft prompt", "prefix": "Prefix tuning",
                "adapter": "LLaMA-Adapter", "lora": "LoRA r=4", "lora128": "LoRA r=128", "full": "Full fine-tuning"}
SCRIPT_NAMES = {"Latn": "Latin", "Cyrl": "Cyrillic", "Arab": "Arabic", "Deva": "Devanagari", "Grek": "Greek",
                "Thai": "Thai", "Hans": "Han", "Jpan": "Japanese", "Beng": "Bengali", "Telu": "Telugu",
                "Mymr": "Burmese", "Ethi": "Ethiopic", "Knda": "Kannada", "Mlym": "Malayalam", "Taml": "Tamil",
                "Orya": "Odia", "Sinh": "Sinhala"}
LEGEND = ("Cells: our number, then <sub>(the paper's number, ours - paper)</sub>; `-` where we have no "
          "finished run. Averages are over the table's languages, shown when a run has all of them. Bars "
          "carry ±1 s.e. over examples where the run's per-example scores (eval/<row>/<lang>.json) exist.")


def save_figure(fig, path):
    """Save a PNG through a temporary file and a rename, as every result is written, then free the figure."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    tmp.replace(path)
    plt.close(fig)


def load_paper(path=PAPER_FILE) -> dict:
    """paper_results.json's tables by id."""
    return {t["id"]: t for t in json.loads(Path(path).read_text())["tables"]}


def load_results(runs_dir, name):
    path = Path(runs_dir) / name / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def trained_row(results) -> str:
    """The row of results.json that holds the run's own method (not the base model beside it)."""
    rows = results["rows"]
    method = results.get("config", {}).get("method")
    if method in rows:
        return method
    others = [r for r in rows if r != "base"]
    return others[0] if others else "base"


def scores(results, row, metric=None) -> dict:
    """{lang: value} of one row; `metric` when the run has it, else the run's primary metric."""
    values = results["rows"][row]
    first = next(iter(values.values()), {})
    key = metric if metric in first else results["metric"]
    return {lang: m[key] for lang, m in values.items() if key in m}


def mean(values):
    values = list(values)
    return sum(values) / len(values) if values else None


class Collector:
    """Reads runs once and remembers which are missing, and why a row has no per-example scores."""

    def __init__(self, runs_dir):
        self.runs_dir, self.cache, self.missing = Path(runs_dir), {}, []
        self.example_cache, self.no_examples = {}, []

    def get(self, name):
        if name not in self.cache:
            self.cache[name] = load_results(self.runs_dir, name)
            if self.cache[name] is None:
                self.missing.append(name)
        return self.cache[name]

    def errors(self, name, row, languages, metric=None) -> dict:
        """{lang: s.e. over examples, "avg": s.e. of the mean over `languages`} of a finished run's
        row; {} where its per-example scores are missing or stale (the reason kept in no_examples)."""
        key = (name, row, metric)
        if key not in self.example_cache:
            results, self.example_cache[key] = self.get(name), None
            try:
                self.example_cache[key] = results and (example_scores(self.runs_dir, name, row, results, metric),
                                                       example_clusters(self.runs_dir, name, row, results))
            except ValueError as e:
                self.no_examples.append(str(e))
        values, clusters = self.example_cache[key] or (None, None)
        if not values or not all(l in values for l in languages):
            return {}
        out = {l: stats.mean_and_se(values, [l], clusters)[1] for l in languages}
        return dict(out, avg=stats.mean_and_se(values, languages, clusters)[1])

    def sizes(self, name, row, languages, metric=None) -> dict:
        """{lang: examples scored} of a run's row, from its per-example scores; {} where they are missing."""
        self.errors(name, row, languages, metric)
        values, _ = self.example_cache[(name, row, metric)] or (None, None)
        return {l: len(values[l][0]) for l in languages if values and l in values}


# --- per-example statistics -----------------------------------------------------------------------

def example_scores(runs_dir, name, row, results, metric=None) -> dict:
    """{lang: (ids, values)} of one row of a run, sorted by id, from evaluate.py's
    eval/<row>/<lang>.json: each prediction's metric where it has one (XQuAD f1, MGSM acc), else
    100 x correct (accuracy). Raises ValueError where a file is missing, an id is absent or repeated,
    or a language's mean is not results.json's (a file left from another evaluation).

    Args:
        results: the run's results.json; its languages are read, any other file is ignored.
        metric: as in `scores`: this metric where the run has it, else the run's primary metric.
    """
    values = results["rows"][row]
    first = next(iter(values.values()), {})
    key = metric if metric in first else results["metric"]
    out = {}
    for lang in results["languages"]:
        path = Path(runs_dir) / name / "eval" / row / f"{lang}.json"
        if not path.is_file():
            raise ValueError(f"{path} is missing: per-example scores come from evaluate.py's eval/<row>/<lang>.json")
        ids, scored = stats.per_example(json.loads(path.read_text())["predictions"], key, where=path)
        expected = values[lang][key]
        if len(scored) == 0 or abs(scored.mean() - expected) > 1e-6 * max(1.0, abs(expected)):
            raise ValueError(f"{path}: the mean of its {len(scored)} examples is not results.json's {key} {expected}; "
                             f"rerun evaluate.py --run {name} so the two agree")
        out[lang] = (ids, scored)
    return out


def example_clusters(runs_dir, name, row, results):
    """{id: group}: the passage (XQuAD paragraph, XNLI premise, Belebele passage) each example of the
    row shares with others, as evaluate.py records it, else (predictions from before it did) as the
    benchmark's local files give it; None for a task whose examples stand alone (MGSM) or where
    neither says."""
    found = []
    for lang in results["languages"]:
        path = Path(runs_dir) / name / "eval" / row / f"{lang}.json"
        found.append(stats.clusters_of(json.loads(path.read_text())["predictions"]) if path.is_file() else None)
    return stats.merge_clusters(found) or clusters_from_data(results)


_DATA_CLUSTERS = {}  # (task, data_dir, subset, split, languages): {id: group}; the files are read once


def clusters_from_data(results):
    """{id: group} of every evaluation row of the run's task, subset and split, in each of its
    languages, read from its local data_dir; None where it has none (the hub is not asked), the files
    cannot be read, or the task does not group its examples."""
    config = results.get("config", {})
    key = (results.get("task"), config.get("data_dir"), config.get("eval_subset"), config.get("eval_split"),
           tuple(results.get("languages", ())))
    if key[0] is None or key[1] is None:
        return None
    if key not in _DATA_CLUSTERS:
        try:
            task = data.load_task(key[0])
            found = [{ex["id"]: ex.get("group") for ex in task.eval_examples(lang, key[1], subset=key[2], split=key[3])}
                     for lang in key[4]]
            _DATA_CLUSTERS[key] = None if any(None in f.values() for f in found) else stats.merge_clusters(found)
        except (OSError, ValueError, KeyError):
            _DATA_CLUSTERS[key] = None
    return _DATA_CLUSTERS[key]


def group_members(languages, by, task=None):
    """{group: [languages]} by script, family (Belebele: the paper's families) or resource level, for
    the languages with that metadata; {} when they fall in fewer than two groups."""
    key = "paper_family" if by == "family" and task == "belebele" else by
    known = [l for l in languages if key in data.LANGUAGES.get(l, {})]
    groups = list(dict.fromkeys(data.LANGUAGES[l][key] for l in known))
    if len(groups) < 2:
        return {}
    return {g: [l for l in known if data.LANGUAGES[l][key] == g] for g in groups}


def group_label(by, group, n):
    """How a table names a group of n languages: "Latin script (7)", "low-resource (2)", "Indo-European (9)"."""
    name = dict(script=f"{SCRIPT_NAMES.get(group, group)} script", resource=f"{group}-resource").get(by, group)
    return f"{name} ({n})"


def averages(languages, task=None):
    """{key: (label, [languages])}: all languages, the non-English ones, each script and family, and
    the low- and high-resource languages (keys "resource:low", "resource:high")."""
    out = {"avg": (f"avg ({len(languages)})", list(languages))}
    others = [l for l in languages if data.LANGUAGES.get(l, {}).get("name") != "English"]
    if 0 < len(others) < len(languages):
        out["non_en"] = (f"non-English ({len(others)})", others)
    for by in ("script", "family", "resource"):
        for group, members in group_members(languages, by, task).items():
            out[f"{by}:{group}"] = (group_label(by, group, len(members)), members)
    return out


def fmt_number(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_cell(ours, paper, printed=True):
    """`printed`: `paper` is a number the paper prints (1 decimal, sometimes 2: MGSM, Table 6),
    not a mean we computed from them (1 decimal)."""
    if paper is None:
        return fmt_number(ours)
    paper_text = f"{paper:.2f}" if printed and round(paper, 1) != round(paper, 2) else f"{paper:.1f}"
    if ours is None:
        return f"- <sub>({paper_text})</sub>"
    return f"{ours:.1f} <sub>({paper_text}, {ours - paper:+.1f})</sub>"


def markdown_table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])


# --- per-language tables ----------------------------------------------------------------------

def per_language(table, runs):
    """(languages, {row: (ours {lang: v}, paper {lang: v})}, {row: (run, its results row) or None})
    for a table with languages as columns."""
    languages = [c for c in table["columns"] if c != "avg"]
    out, sources, base_fallback = {}, {}, None
    for row, run in table["runs"].items():
        results = runs.get(run)
        if results is not None and base_fallback is None and "base" in results["rows"]:
            base_fallback = run, scores(results, "base", table["metric"])
        own = results and ("base" if row == "base" else trained_row(results))
        ours = scores(results, own, table["metric"]) if results else {}
        out[row] = [{l: ours[l] for l in languages if l in ours}, dict(table["rows"].get(row, {}))]
        sources[row] = (run, own) if results else None
    if "base" in out and not out["base"][0] and base_fallback:
        out["base"][0] = {l: base_fallback[1][l] for l in languages if l in base_fallback[1]}
        sources["base"] = base_fallback[0], "base"
    return languages, out, sources


def with_average(values, languages, printed=None):
    if printed is not None:
        return printed
    return mean(values[l] for l in languages) if all(l in values for l in languages) else None


def render_per_language(table, languages, rows):
    header = ["method"] + languages + ["avg"]
    lines = []
    for row, (ours, paper) in rows.items():
        cells = [fmt_cell(ours.get(l), paper.get(l)) for l in languages]
        paper_avg = with_average(paper, languages, paper.get("avg")) if paper else None
        cells.append(fmt_cell(with_average(ours, languages), paper_avg, printed="avg" in paper))
        lines.append([METHOD_NAMES.get(row, row)] + cells)
    return markdown_table(header, lines)


def sizes_text(sizes):
    """"Examples per language: 1245 in every row." or each row's count, and a warning, where rows differ."""
    def span(counts):
        low, high = min(counts.values()), max(counts.values())
        return str(low) if low == high else f"{low}-{high}"
    known = {row: span(n) for row, n in sizes.items() if n}
    unknown = [METHOD_NAMES.get(row, row) for row, n in sizes.items() if not n]
    tail = f" ({', '.join(unknown)}: no per-example scores)" if unknown else ""
    if len(set(known.values())) == 1:
        return f"Examples per language: {next(iter(known.values()))} in every row{tail}."
    return ("Examples per language: " + "; ".join(f"{METHOD_NAMES.get(r, r)} {n}" for r, n in known.items()) + tail
            + ". Rows of different sizes are different samples, not comparable cell by cell; `python report.py "
              "--compare A B --common-examples` pairs them on the examples both scored.")


def render_groups(table, languages, rows, by):
    """Mean per script, family or resource level, ours and the paper's over the same languages of the table."""
    members = group_members(languages, by, table.get("task"))
    if not members:
        return None
    groups = list(members)
    header = [by] + [group_label(by, g, len(members[g])) for g in groups]
    lines = []
    for row, (ours, paper) in rows.items():
        cells = [fmt_cell(with_average(ours, members[g]), with_average(paper, members[g]) if paper else None,
                          printed=False) for g in groups]
        lines.append([METHOD_NAMES.get(row, row)] + cells)
    return markdown_table(header, lines)


ERROR_BARS = "error bars ±1 s.e. over examples"


def bars_figure(table, languages, rows, errors=None):
    """Ours as bars (±1 s.e. where `errors` {row: {lang: s.e.}} has it), the paper as black ticks;
    the paper is in the legend only when it has a number here."""
    errors = errors or {}
    names = list(rows)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(languages) * max(1, len(names) / 3)), 4.5))
    paper_in_legend = False
    for i, row in enumerate(names):
        ours, paper = rows[row]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(languages))]
        yerr = [errors[row].get(l) or 0.0 for l in languages] if errors.get(row) else None
        ax.bar(xs, [ours.get(l, 0.0) for l in languages], width, yerr=yerr, capsize=2, label=METHOD_NAMES.get(row, row))
        px = [x for x, l in zip(xs, languages) if l in paper]
        if px:
            ax.scatter(px, [paper[l] for l in languages if l in paper], marker="_", s=60 * width * 10,
                       color="black", zorder=3, label=None if paper_in_legend else "paper")
            paper_in_legend = True
    ax.set_xticks(range(len(languages)), languages, rotation=45 if len(languages) > 12 else 0, ha="right")
    ax.set_ylabel(table["metric"])
    ax.set_ylim(0, 1.2 * max([1.0] + [v for o, p in rows.values() for v in (*o.values(), *p.values())]))
    title = "ours (bars) vs paper (ticks)" if paper_in_legend else "ours"
    ax.set_title(f"{table.get('caption', table['id'])}: {title}" + (f"; {ERROR_BARS}" if errors else ""))
    ax.legend(fontsize=8, ncol=min(len(names) + 1, 6), loc="upper right")
    fig.tight_layout()
    return fig


def plot_per_language(table, languages, rows, out_dir, errors=None):
    """A bar chart (bars_figure) and a method x language heatmap."""
    fig = bars_figure(table, languages, rows, errors)
    bars_path = Path(out_dir) / f"{table['id']}_bars.png"
    save_figure(fig, bars_path)
    names, has_paper = list(rows), any(paper for _, paper in rows.values())

    if not any(ours for ours, _ in rows.values()):
        return [bars_path]  # nothing of ours to map
    columns = languages + ["avg"]
    grid = [[(rows[r][0].get(l) if l != "avg" else with_average(rows[r][0], languages)) for l in columns]
            for r in names]
    values = [[math.nan if v is None else v for v in line] for line in grid]
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(columns)), 0.6 * len(names) + 1.5))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    for i, r in enumerate(names):
        paper = rows[r][1]
        for j, l in enumerate(columns):
            if grid[i][j] is None:
                continue
            ref = paper.get(l) if l != "avg" else (with_average(paper, languages, paper.get("avg")) if paper else None)
            text = f"{grid[i][j]:.1f}" + (f"\n{grid[i][j] - ref:+.1f}" if ref is not None else "")
            bright = grid[i][j] > (image.norm.vmin + image.norm.vmax) / 2  # viridis is light at the top
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="black" if bright else "white")
    ax.set_xticks(range(len(columns)), columns, rotation=45 if len(columns) > 12 else 0, ha="right")
    ax.set_yticks(range(len(names)), [METHOD_NAMES.get(r, r) for r in names])
    ax.set_title(f"{table.get('caption', table['id'])}: " + ("ours, and ours - paper" if has_paper else "ours"))
    fig.colorbar(image, ax=ax, label=table["metric"])
    fig.tight_layout()
    heatmap_path = Path(out_dir) / f"{table['id']}_heatmap.png"
    save_figure(fig, heatmap_path)
    return [bars_path, heatmap_path]


# --- summary tables (averages only) -----------------------------------------------------------

def summary(table, runs):
    """{row: {column: (ours, paper, ours' s.e. or None)}}: each cell is one run's average over its
    languages."""
    out = {}
    for row, cells in table["runs"].items():
        out[row] = {}
        for column, run in cells.items():
            results = runs.get(run)
            ours = se = None
            if results is not None:
                own = "base" if row == "base" else trained_row(results)
                ours = mean(scores(results, own).values())
                se = runs.errors(run, own, results["languages"]).get("avg")
            out[row][column] = (ours, table["rows"].get(row, {}).get(column), se)
    return out


def render_summary(table, cells):
    params = table.get("params", {})
    header = ["method"] + (["params"] if params else []) + table["columns"]
    lines = [[METHOD_NAMES.get(row, row)] + ([params.get(row, "")] if params else [])
             + [fmt_cell(*values[c][:2]) for c in table["columns"]] for row, values in cells.items()]
    return markdown_table(header, lines)


def summary_figure(table, cells):
    """Ours (±1 s.e. where known) beside the paper's, which is drawn and named only where it exists."""
    labels, ours, paper, errors = [], [], [], []
    for row, values in cells.items():
        for column in table["columns"]:
            labels.append(METHOD_NAMES.get(row, row) + ("" if column == "avg" else f"\n{column}"))
            ours.append(values[column][0] or 0.0)
            paper.append(values[column][1])
            errors.append(values[column][2] or 0.0)
    has_paper = any(p is not None for p in paper)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    xs = range(len(labels))
    shift = 0.2 if has_paper else 0.0
    ax.bar([x - shift for x in xs], ours, 0.4, yerr=errors if any(errors) else None, capsize=2, label="ours")
    if has_paper:
        ax.bar([x + shift for x in xs], [p or 0.0 for p in paper], 0.4, label="paper", color="lightgray",
               edgecolor="black")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel(table["metric"])
    ax.set_title(table.get("caption", table["id"]) + (f"; {ERROR_BARS}" if any(errors) else ""))
    ax.legend()
    fig.tight_layout()
    return fig


def plot_summary(table, cells, out_dir):
    fig = summary_figure(table, cells)
    path = Path(out_dir) / f"{table['id']}_bars.png"
    save_figure(fig, path)
    return [path]


# --- tables for arbitrary runs ------------------------------------------------------------------

def tables_for_runs(names, runs, paper):
    """Per-language tables for `names`, one per (task, model), with the paper's numbers where a
    per-language table of the paper has that task, model, metric and method."""
    by_key = {}
    for name in names:
        results = runs.get(name)
        if results is None:
            continue
        task, model = results.get("task"), results.get("config", {}).get("model")
        method = name.split(f"_{task}_")[0] if f"_{task}_" in name else trained_row(results)
        table = by_key.setdefault((task, model), dict(
            id=f"{task}_{model}".replace(".", "_"), caption=f"{task} {results['metric']}, {model}", task=task,
            model=model, metric=results["metric"], columns=[], rows={}, runs={}))
        row = method if method not in table["runs"] else name
        table["runs"][row] = name
        table["columns"] += [l for l in results["languages"] if l not in table["columns"]]
    for table in by_key.values():
        for ref in paper.values():
            if ref["kind"] != "per_language" or (ref["task"], ref["model"], ref["metric"]) != \
                    (table["task"], table["model"], table["metric"]):
                continue
            for row in table["runs"]:
                for lang, value in ref["rows"].get(row, {}).items():
                    if lang != "avg" and lang in table["columns"]:
                        table["rows"].setdefault(row, {}).setdefault(lang, value)
        table["kind"] = "per_language"
    return list(by_key.values())


# --- comparing runs on the same examples ---------------------------------------------------------

# Config fields that do not make two runs different experiments: what a run is called and where it
# lives, and its free-text note. Runs that differ in nothing else but seed are seeds of one experiment.
NOT_THE_EXPERIMENT = ("name", "out_dir", "description")


def load_entry(runs_dir, spec):
    """One row of one run, for --compare: "RUN" (its trained row) or "RUN:ROW"."""
    name, _, row = spec.partition(":")
    results = load_results(runs_dir, name)
    if results is None:
        raise ValueError(f"run {name!r} has no results.json in {runs_dir}; evaluate it first")
    row = row or trained_row(results)
    if row not in results["rows"]:
        raise ValueError(f"run {name!r} has no row {row!r}; its rows: {', '.join(results['rows'])}")
    return dict(name=name, row=row, results=results, config=results.get("config", {}),
                examples=example_scores(runs_dir, name, row, results),
                clusters=example_clusters(runs_dir, name, row, results))


def _experiment(entry):
    """What seeds of one experiment share: the row and every config field but seed and names. A field
    that a results.json predates counts as what it was made with (config.recorded), so a seed run
    before the field was added (as LLaMA-Adapter's seed 0 before `group_by_length`) still pools."""
    saved = entry["config"]
    config = {k: C.recorded(saved, k) if k in C.FIELDS else saved[k] for k in {*C.FIELDS, *saved}
              if k not in NOT_THE_EXPERIMENT + ("seed",)}
    return entry["row"], json.dumps(config, sort_keys=True, default=str)


def seed_groups(entries):
    """Entries in groups of seeds: the same row of runs whose configs differ in seed alone (and in
    NOT_THE_EXPERIMENT), each seed once; in order of first appearance. Anything else stays alone."""
    groups = []
    for entry in entries:
        home = next((g for g in groups if _experiment(g[0]) == _experiment(entry)
                     and entry["config"].get("seed") not in [e["config"].get("seed") for e in g]), None)
        if home is None or "seed" not in entry["config"]:
            groups.append([entry])
        else:
            home.append(entry)
    return groups


def _label(group):
    entry = group[0]
    text = entry["name"] + ("" if entry["row"] == trained_row(entry["results"]) else f":{entry['row']}")
    return text + (f" ({len(group)} seeds)" if len(group) > 1 else "")


def check_same_examples(a, b, languages):
    """Raise ValueError unless entries `a` and `b` scored the same example ids in each language."""
    for lang in languages:
        ids_a, ids_b = a["examples"][lang][0], b["examples"][lang][0]
        if len(ids_a) != len(ids_b) or not (ids_a == ids_b).all():
            common = len(np.intersect1d(ids_a, ids_b))
            raise ValueError(
                f"{a['name']}:{a['row']} and {b['name']}:{b['row']} were not scored on the same examples in {lang}: "
                f"{len(ids_a)} and {len(ids_b)} examples, {common} in common; paired statistics need the same "
                f"examples (eval_samples below a benchmark's size draws them by seed; --common-examples compares "
                f"on those in common)")


def narrow_to_common(entries, languages):
    """Keep, in every entry and language, only the example ids that every entry scored. Returns
    {entry name:row: {lang: examples it scored}} for the entries that held more than the common ones.
    Raises ValueError where a language has no example in common."""
    held = {}
    for lang in languages:
        common = functools.reduce(np.intersect1d, [e["examples"][lang][0] for e in entries])
        if not len(common):
            raise ValueError(f"{', '.join(e['name'] for e in entries)} have no example in common in {lang}")
        for e in entries:
            ids, values = e["examples"][lang]
            if len(ids) > len(common):
                held.setdefault(f"{e['name']}:{e['row']}", {})[lang] = len(ids)
                keep = np.isin(ids, common)
                e["examples"][lang] = (ids[keep], values[keep])
    return held


def compare(runs_dir, specs, n_resamples=2000, seed=0, level=0.95, languages=None, common=False):
    """Every entry of `specs` against the first, on the examples both scored: per language and per
    average, each entry's score (mean over seeds of the per-example score) with its s.e. over
    examples and its spread across seeds, and the difference to the first with the paired s.e. and a
    paired bootstrap interval (the same resample of examples for both; parallel languages resampled
    together). Each difference also counts training seeds (stats.with_seeds: seed_se, total_se, df,
    total_ci), where every trained side of it has at least two; a base row has no training seed.
    A single spec "RUN" compares the run's trained row against its base row. `languages`: compare on
    these (each must be scored by every run), not on every language the runs share. `common`: where
    runs scored different samples, compare on the examples all of them scored (narrow_to_common;
    the result's `narrowed` names what each run held) instead of refusing.

    Returns the report as a JSON-ready dict (see render_compare)."""
    if n_resamples < 1 or not 0 < level < 1:
        raise ValueError(f"--resamples must be at least 1 and --level between 0 and 1, got {n_resamples} and {level}")
    if len(specs) == 1 and ":" not in specs[0]:
        specs = [f"{specs[0]}:base", specs[0]]
    entries = [load_entry(runs_dir, s) for s in specs]
    kinds = {(e["results"]["task"], e["results"]["metric"]) for e in entries}
    if len(kinds) > 1:
        raise ValueError("runs of different tasks or metrics cannot be compared: "
                         + ", ".join(f"{e['name']} {e['results']['task']} {e['results']['metric']}" for e in entries))
    groups = seed_groups(entries)
    if len(groups) < 2:
        raise ValueError(f"nothing to compare: {', '.join(specs)} are seeds of one experiment, pooled into one "
                         f"entry; name a run to compare them against first")
    all_languages = list(dict.fromkeys(l for e in entries for l in e["results"]["languages"]))
    shared = [l for l in all_languages if all(l in e["examples"] for e in entries)]
    if languages is not None:
        lacking = [l for l in languages if l not in shared]
        if lacking or not languages:
            raise ValueError(f"{', '.join(specs)} do not all score {', '.join(lacking) or 'an empty language list'}"
                             f"; they share {', '.join(shared) or 'no language'}")
        languages = list(dict.fromkeys(languages))
    else:
        languages = shared
    if not languages:
        raise ValueError(f"{', '.join(specs)} share no language")
    narrowed = narrow_to_common(entries, languages) if common else {}
    for entry in entries[1:]:
        check_same_examples(entries[0], entry, languages)
    (task, metric), = kinds
    keyed = dict({l: (l, [l]) for l in languages}, **averages(languages, task))
    keys = {k: langs for k, (_, langs) in keyed.items()}

    def pooled(group):  # per example, the mean over the group's seeds
        return {l: (group[0]["examples"][l][0], np.mean([e["examples"][l][1] for e in group], 0)) for l in languages}

    # the passages examples share are the benchmark's, whichever run recorded them
    clusters = next((e["clusters"] for e in entries if e["clusters"] is not None), None)
    out_entries = []
    reference = pooled(groups[0])
    for i, group in enumerate(groups):
        values = pooled(group)
        scores_ = stats.summarize(values, keys, clusters=clusters)
        per_seed = [stats.summarize({l: e["examples"][l] for l in languages}, keys, clusters=clusters) for e in group]
        for key, cell in scores_.items():
            cell["per_seed"] = [s[key]["mean"] for s in per_seed]
            cell["seed_sd"] = float(np.std(cell["per_seed"], ddof=1)) if len(group) > 1 else None
            cell.pop("ci")
        entry = dict(label=_label(group), runs=[e["name"] for e in group], row=group[0]["row"],
                     seeds=[e["config"].get("seed") for e in group], scores=scores_)
        if i:
            diffs = {l: (values[l][0], values[l][1] - reference[l][1]) for l in languages}
            entry["difference"] = stats.summarize(diffs, keys, n_resamples, seed, level, clusters)
            for key, cell in entry["difference"].items():  # and over training seeds too, where measured
                sides = [(e, n) for e, n in ((out_entries[0], len(groups[0])), (entry, len(group))) if e["row"] != "base"]
                cell.update(stats.with_seeds(cell, [(e["scores"][key]["seed_sd"], n) for e, n in sides], level))
        out_entries.append(entry)
    return dict(task=task, metric=metric, languages=languages,
                left_out=[l for l in all_languages if l not in languages],
                n_examples={l: len(reference[l][0]) for l in languages}, narrowed=narrowed,
                labels={k: label for k, (label, _) in keyed.items()}, members=keys,
                resampling=("questions, shared by all languages" if stats.is_parallel(reference) else
                            "examples: within an average whose languages hold the same ids, shared by them; otherwise "
                            "within each language")
                + ("; drawn a passage at a time, with cluster-robust s.e.s" if clusters else
                   "; drawn one at a time, as no passages are known"),
                n_resamples=n_resamples, bootstrap_seed=seed, level=level, n_clusters=_count_clusters(clusters, reference),
                entries=out_entries)


def _count_clusters(clusters, values):
    """{lang: number of passages its examples come from}; None without clusters."""
    if not clusters:
        return None
    return {l: len(set(stats.cluster_numbers(ids, clusters))) for l, (ids, _) in values.items()}


def render_compare(result):
    """Markdown: languages and averages as rows; each entry's score (± s.e. over examples, seed sd),
    and each later entry's difference to the first (± paired s.e. [bootstrap interval])."""
    entries, reference = result["entries"], result["entries"][0]["label"]
    header = ["", f"{reference}"]
    for entry in entries[1:]:
        header += [entry["label"], f"Δ {entry['label']}"]
    lines = []
    for key, label in result["labels"].items():
        cells = []
        for i, entry in enumerate(entries):
            score = entry["scores"][key]
            sd = "" if score["seed_sd"] is None else f" (sd {score['seed_sd']:.1f})"
            cells.append(stats.fmt_pm(score) + sd)
            if i:
                seeds = stats.fmt_seeds(entry["difference"][key])
                cells.append(stats.fmt_pm(entry["difference"][key], signed=True, ci=True)
                             + (f"; seeds {seeds}" if seeds else ""))
        lines.append([label if key in result["n_examples"] else f"**{label}**"] + cells)
    n = sorted(set(result["n_examples"].values()))
    passages = sorted(set((result.get("n_clusters") or {}).values()))
    in_passages = f" in {'/'.join(map(str, passages))} passages" if passages else ""
    notes = [f"{result['task']} {result['metric']}; {'/'.join(map(str, n))} examples{in_passages} per language; "
             f"`mean ± s.e.` over examples (seed groups: per example the mean over seeds, `sd` the spread of the "
             f"score across seeds); differences to {reference} with the paired s.e. and a "
             f"{100 * result['level']:.0f}% paired bootstrap interval ({result['n_resamples']} resamples of "
             f"{result['resampling']}, seed {result['bootstrap_seed']})."]
    if any(stats.fmt_seeds(d) for e in entries[1:] for d in e["difference"].values()):
        notes.append(f"`seeds ± s.e. [interval]`: the difference counting training seeds too (trained sides with "
                     f"2 or more seeds): the s.e. over examples and each side's seed sd/√n in quadrature, and a "
                     f"{100 * result['level']:.0f}% Student t interval (Welch-Satterthwaite degrees of freedom).")
    if result["left_out"]:
        notes.append(f"Left out (not scored by every run): {', '.join(result['left_out'])}.")
    if result.get("narrowed"):
        notes.append(narrowed_text(result))
    return markdown_table(header, lines) + "\n\n" + "\n".join(notes)


def narrowed_text(result):
    """The sentence saying which runs scored more examples than the comparison used."""
    def counts(values):
        return "/".join(map(str, sorted(set(values))))
    held = "; ".join(f"`{spec}` {counts(n.values())} per language in {len(n)} language{'s' * (len(n) > 1)}"
                     for spec, n in result["narrowed"].items())
    return (f"Compared on the {counts(result['n_examples'].values())} examples per language that every run "
            f"scored; runs that scored more (the rest not used here): {held}.")


def compare_figure(result):
    """Bars: each later entry's difference to the first, per language and average, with the
    bootstrap interval as error bars and, where its seeds were counted (stats.with_seeds), the wider
    interval over examples and seeds as thin dark whiskers."""
    keys, entries = list(result["labels"]), result["entries"][1:]
    width = 0.8 / len(entries)
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(keys) * max(1, len(entries) / 2)), 4.5))
    for i, entry in enumerate(entries):
        xs = [j + (i - (len(entries) - 1) / 2) * width for j in range(len(keys))]
        diffs = [entry["difference"][k] for k in keys]
        heights = [d["mean"] for d in diffs]
        errors = [[h - d["ci"][0] for h, d in zip(heights, diffs)], [d["ci"][1] - h for h, d in zip(heights, diffs)]]
        ax.bar(xs, heights, width, yerr=errors, capsize=2, label=entry["label"])
        seeded = [(x, h, d["total_ci"]) for x, h, d in zip(xs, heights, diffs) if stats.fmt_seeds(d)]
        if seeded:
            ax.errorbar([x for x, _, _ in seeded], [h for _, h, _ in seeded], fmt="none", ecolor="0.2", elinewidth=0.7,
                        capsize=4, yerr=[[h - ci[0] for _, h, ci in seeded], [ci[1] - h for _, h, ci in seeded]])
    seeds = any(stats.fmt_seeds(d) for e in entries for d in e["difference"].values())
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(keys)), [result["labels"][k] for k in keys], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"{result['metric']} − {result['entries'][0]['label']}")
    ax.set_title(f"{result['task']}: difference to {result['entries'][0]['label']}; error bars: "
                 f"{100 * result['level']:.0f}% paired bootstrap CI"
                 + ("; thin dark whiskers: over examples and training seeds" if seeds else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_compare(result, out_path):
    """reports/<name>.md, .json and _diff_bars.png; returns the Markdown's path."""
    out_path = Path(out_path)
    fig = compare_figure(result)
    png = out_path.with_name(out_path.stem + "_diff_bars.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, png)
    C.write_json_atomic(out_path.with_suffix(".json"), result)
    C.write_text_atomic(out_path, f"# {result['task']}: {' vs '.join(e['label'] for e in result['entries'])}\n\n"
                        f"Written by `{result['command']}`.\n\n{render_compare(result)}\n\n![{png.stem}]({png.name})\n")
    return out_path


def build_report(tables, runs, out_path, title, command):
    """Write the Markdown report and its PNGs; returns the report's path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sections = []
    for table in tables:
        label = table.get("paper_label")
        lines = [f"## {label + ': ' if label else ''}{table.get('caption', table['id'])}", ""]
        if table["kind"] == "per_language":
            languages, rows, sources = per_language(table, runs)
            errors = {row: runs.errors(*source, languages, table["metric"]) for row, source in sources.items()
                      if source}
            errors = {row: e for row, e in errors.items() if e}
            lines += [render_per_language(table, languages, rows), ""]
            sizes = {row: runs.sizes(*source, languages, table["metric"]) for row, source in sources.items() if source}
            if any(sizes.values()):
                lines += [sizes_text(sizes), ""]
            for by in ("script", "family", "resource"):
                grouped = render_groups(table, languages, rows, by)
                if grouped:
                    lines += [f"By {by} (mean over the languages above):", "", grouped, ""]
            pngs = plot_per_language(table, languages, rows, out_path.parent, errors)
        else:
            cells = summary(table, runs)
            lines += [render_summary(table, cells), ""]
            pngs = plot_summary(table, cells, out_path.parent)
        if table.get("notes"):
            lines += [f"Paper notes: {table['notes']}", ""]
        lines += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
        sections.append("\n".join(lines))
    head = [f"# {title}", "", f"Written by `{command}`.", "", LEGEND, ""]
    if runs.missing:
        head += ["Runs without results (train and evaluate them first):", ""]
        head += [f"- `{name}`" for name in sorted(set(runs.missing))] + [""]
    if runs.no_examples:
        head += ["Rows drawn without error bars (no per-example scores):", ""]
        head += [f"- {reason}" for reason in dict.fromkeys(runs.no_examples)] + [""]
    C.write_text_atomic(out_path, "\n".join(head + sections))
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pick = parser.add_mutually_exclusive_group(required=True)
    pick.add_argument("--runs", nargs="+", metavar="RUN", help="run names of runs.yaml")
    pick.add_argument("--table", nargs="+", metavar="ID", help="paper table ids, e.g. table1 table4_script")
    pick.add_argument("--all", action="store_true", help="every table of paper_results.json")
    pick.add_argument("--compare", nargs="+", metavar="RUN[:ROW]",
                      help="runs (or RUN:ROW, e.g. lora_xnli_llama8b:base) against the first, on the same examples")
    parser.add_argument("--common-examples", action="store_true",
                        help="--compare runs scored on different samples on the examples all of them scored")
    statistics = parser.add_argument_group("--compare statistics")
    statistics.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    statistics.add_argument("--bootstrap-seed", type=int, default=0, help="the bootstrap's generator seed")
    statistics.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs"), help="where runs/<name>/results.json live")
    parser.add_argument("--paper", default=str(PAPER_FILE))
    parser.add_argument("--out", default=None, help="Markdown path (default reports/<name>.md)")
    args = parser.parse_args(argv)

    command = "python report.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.compare:
        try:
            result = compare(args.runs_dir, args.compare, args.resamples, args.bootstrap_seed, args.level,
                             common=args.common_examples)
        except ValueError as e:
            sys.exit(f"error: {e}")
        result["command"] = command
        path = write_compare(result, Path(args.out) if args.out else ROOT / "reports" / "compare.md")
        print(render_compare(result) + f"\n\nwritten {path}, {path.with_suffix('.json').name} and its plot")
        return result
    paper = load_paper(args.paper)
    runs = Collector(args.runs_dir)
    if args.runs:
        tables, name = tables_for_runs(args.runs, runs, paper), "runs"
    else:
        ids = list(paper) if args.all else args.table
        unknown = [i for i in ids if i not in paper]
        if unknown:
            sys.exit(f"error: unknown table(s) {', '.join(unknown)}; known: {', '.join(paper)}")
        tables, name = [paper[i] for i in ids], "all" if args.all else "_".join(ids)
    out = Path(args.out) if args.out else ROOT / "reports" / f"{name}.md"
    path = build_report(tables, runs, out, f"xprefix vs the paper: {name}", command)
    print(f"written {path}" + (f"; {len(set(runs.missing))} run(s) without results" if runs.missing else ""))


if __name__ == "__main__":
    main()
