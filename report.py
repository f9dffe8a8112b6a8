"""Our results next to the paper's: Markdown tables, grouped tables and PNG plots.

    python report.py --table table1                    # the runs behind one table of the paper
    python report.py --all                             # every table of paper_results.json
    python report.py --runs prefix_xnli_llama8b lora_xnli_llama8b   # any runs, by task and model

Reads each finished run's runs/<name>/results.json (written by evaluate.py) and the paper's
numbers from paper_results.json, and writes reports/<name>.md with PNGs beside it. A cell reads
"ours (paper, ours - paper)". Runs without results.json are listed at the top, not fatal; their
rows show the paper's numbers alone.

Which row of a run's results: the paper's "base" row is the base run's `base` row (or, when that
run is missing, the `base` row any other run of the table evaluated beside its adapter); every
other row is the run's trained method. Averages are over the table's languages and are shown only
when a run has all of them.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import data  # noqa: E402

ROOT = Path(__file__).resolve().parent
PAPER_FILE = ROOT / "paper_results.json"
METHOD_NAMES = {"base": "Base model", "soft_prompt": "Soft prompt", "prefix": "Prefix tuning",
                "adapter": "LLaMA-Adapter", "lora": "LoRA r=4", "lora128": "LoRA r=128", "full": "Full fine-tuning"}
SCRIPT_NAMES = {"Latn": "Latin", "Cyrl": "Cyrillic", "Arab": "Arabic", "Deva": "Devanagari", "Grek": "Greek",
                "Thai": "Thai", "Hans": "Han", "Jpan": "Japanese", "Beng": "Bengali", "Telu": "Telugu",
                "Mymr": "Burmese", "Ethi": "Ethiopic", "Knda": "Kannada", "Mlym": "Malayalam", "Taml": "Tamil",
                "Orya": "Odia", "Sinh": "Sinhala"}
LEGEND = ("Cells: our number, then <sub>(the paper's number, ours - paper)</sub>; `-` where we have no "
          "finished run. Averages are over the table's languages, shown when a run has all of them.")


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
    """Reads runs once and remembers which are missing."""

    def __init__(self, runs_dir):
        self.runs_dir, self.cache, self.missing = Path(runs_dir), {}, []

    def get(self, name):
        if name not in self.cache:
            self.cache[name] = load_results(self.runs_dir, name)
            if self.cache[name] is None:
                self.missing.append(name)
        return self.cache[name]


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
    """{row: (ours {lang: v}, paper {lang: v})} for a table with languages as columns."""
    languages = [c for c in table["columns"] if c != "avg"]
    out, base_fallback = {}, None
    for row, run in table["runs"].items():
        results = runs.get(run)
        if results is not None and base_fallback is None and "base" in results["rows"]:
            base_fallback = scores(results, "base", table["metric"])
        ours = scores(results, "base" if row == "base" else trained_row(results), table["metric"]) if results else {}
        out[row] = [{l: ours[l] for l in languages if l in ours}, dict(table["rows"].get(row, {}))]
    if "base" in out and not out["base"][0] and base_fallback:
        out["base"][0] = {l: base_fallback[l] for l in languages if l in base_fallback}
    return languages, out


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


def render_groups(table, languages, rows, by):
    """Mean per script or family, ours and the paper's over the same languages of the table."""
    key = "paper_family" if by == "family" and table.get("task") == "belebele" else by
    known = [l for l in languages if key in data.LANGUAGES.get(l, {})]
    groups = list(dict.fromkeys(data.LANGUAGES[l][key] for l in known))
    if len(groups) < 2:
        return None
    members = {g: [l for l in known if data.LANGUAGES[l][key] == g] for g in groups}
    header = [by] + [f"{SCRIPT_NAMES.get(g, g) if by == 'script' else g} ({len(members[g])})" for g in groups]
    lines = []
    for row, (ours, paper) in rows.items():
        cells = [fmt_cell(with_average(ours, members[g]), with_average(paper, members[g]) if paper else None,
                          printed=False) for g in groups]
        lines.append([METHOD_NAMES.get(row, row)] + cells)
    return markdown_table(header, lines)


def plot_per_language(table, languages, rows, out_dir):
    """A bar chart (ours as bars, the paper as black ticks) and a method x language heatmap."""
    names = list(rows)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(8, 0.6 * len(languages) * max(1, len(names) / 3)), 4.5))
    for i, row in enumerate(names):
        ours, paper = rows[row]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(languages))]
        ax.bar(xs, [ours.get(l, 0.0) for l in languages], width, label=METHOD_NAMES.get(row, row))
        px = [x for x, l in zip(xs, languages) if l in paper]
        ax.scatter(px, [paper[l] for l in languages if l in paper], marker="_", s=60 * width * 10,
                   color="black", zorder=3, label="paper" if i == 0 else None)
    ax.set_xticks(range(len(languages)), languages, rotation=45 if len(languages) > 12 else 0, ha="right")
    ax.set_ylabel(table["metric"])
    ax.set_ylim(0, 1.2 * max([1.0] + [v for o, p in rows.values() for v in (*o.values(), *p.values())]))
    has_paper = any(paper for _, paper in rows.values())
    ax.set_title(f"{table.get('caption', table['id'])}: " + ("ours (bars) vs paper (ticks)" if has_paper else "ours"))
    ax.legend(fontsize=8, ncol=min(len(names) + 1, 6), loc="upper right")
    fig.tight_layout()
    bars_path = Path(out_dir) / f"{table['id']}_bars.png"
    fig.savefig(bars_path, dpi=110)
    plt.close(fig)

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
    fig.savefig(heatmap_path, dpi=110)
    plt.close(fig)
    return [bars_path, heatmap_path]


# --- summary tables (averages only) -----------------------------------------------------------

def summary(table, runs):
    """{row: {column: (ours, paper)}}: each cell is one run's average over its languages."""
    out = {}
    for row, cells in table["runs"].items():
        out[row] = {}
        for column, run in cells.items():
            results = runs.get(run)
            ours = None
            if results is not None:
                ours = mean(scores(results, "base" if row == "base" else trained_row(results)).values())
            out[row][column] = (ours, table["rows"].get(row, {}).get(column))
    return out


def render_summary(table, cells):
    params = table.get("params", {})
    header = ["method"] + (["params"] if params else []) + table["columns"]
    lines = [[METHOD_NAMES.get(row, row)] + ([params.get(row, "")] if params else [])
             + [fmt_cell(*values[c]) for c in table["columns"]] for row, values in cells.items()]
    return markdown_table(header, lines)


def plot_summary(table, cells, out_dir):
    labels, ours, paper = [], [], []
    for row, values in cells.items():
        for column in table["columns"]:
            labels.append(METHOD_NAMES.get(row, row) + ("" if column == "avg" else f"\n{column}"))
            ours.append(values[column][0] or 0.0)
            paper.append(values[column][1] or 0.0)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels)), 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], ours, 0.4, label="ours")
    ax.bar([x + 0.2 for x in xs], paper, 0.4, label="paper", color="lightgray", edgecolor="black")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel(table["metric"])
    ax.set_title(table.get("caption", table["id"]))
    ax.legend()
    fig.tight_layout()
    path = Path(out_dir) / f"{table['id']}_bars.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
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


def build_report(tables, runs, out_path, title, command):
    """Write the Markdown report and its PNGs; returns the report's path."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sections = []
    for table in tables:
        label = table.get("paper_label")
        lines = [f"## {label + ': ' if label else ''}{table.get('caption', table['id'])}", ""]
        if table["kind"] == "per_language":
            languages, rows = per_language(table, runs)
            lines += [render_per_language(table, languages, rows), ""]
            for by in ("script", "family"):
                grouped = render_groups(table, languages, rows, by)
                if grouped:
                    lines += [f"By {by} (mean over the languages above):", "", grouped, ""]
            pngs = plot_per_language(table, languages, rows, out_path.parent)
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
    out_path.write_text("\n".join(head + sections))
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pick = parser.add_mutually_exclusive_group(required=True)
    pick.add_argument("--runs", nargs="+", metavar="RUN", help="run names of runs.yaml")
    pick.add_argument("--table", nargs="+", metavar="ID", help="paper table ids, e.g. table1 table4_script")
    pick.add_argument("--all", action="store_true", help="every table of paper_results.json")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs"), help="where runs/<name>/results.json live")
    parser.add_argument("--paper", default=str(PAPER_FILE))
    parser.add_argument("--out", default=None, help="Markdown path (default reports/<name>.md)")
    args = parser.parse_args(argv)

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
    command = "python report.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = build_report(tables, runs, out, f"xprefix vs the paper: {name}", command)
    print(f"written {path}" + (f"; {len(set(runs.missing))} run(s) without results" if runs.missing else ""))


if __name__ == "__main__":
    main()
