"""Paired statistics over examples, shared by evaluate.py (the gain it prints) and report.py.

Scores come as {lang: (ids, per-example values)} with ids sorted, e.g. per-example differences
between two runs on the same questions. Averages weigh languages equally, as the paper's do. The
benchmarks are parallel (one id is one question in every language), so where every language holds
the same ids they are resampled together: an average's interval then counts that a hard question is
hard in every language, which independent draws per language would hide (too narrow an interval).
Questions also share passages (XQuAD's paragraphs, XNLI's premises, Belebele's passages): where the
predictions record them (`group`), examples are drawn a passage at a time and the s.e. is the
cluster-robust one, for the same reason; without them each example is its own cluster.
Training seeds are a second source of error: with_seeds widens a difference by the seeds' spread.
"""
import math

import numpy as np
from scipy import stats as scipy_stats


def per_example(predictions, metric, where="predictions"):
    """(ids, values) sorted by id from one language's prediction records (evaluate.py's): each
    record's `metric` where it has one (XQuAD f1, MGSM acc), else 100 x correct (accuracy)."""
    ids = [p.get("id") for p in predictions]
    if None in ids or len(set(ids)) != len(ids):
        raise ValueError(f"{where}: example ids are missing or repeated, so examples cannot be paired")
    values = np.array([p[metric] if metric in p else 100.0 * p["correct"] for p in predictions], dtype=float)
    order = np.argsort(np.array(ids, dtype=str), kind="stable")
    return np.array(ids, dtype=str)[order], values[order]


def clusters_of(predictions):
    """{id: group} from prediction records that carry the passage (or premise) they share with other
    examples (evaluate.py writes `group`); None where any record lacks one (an older evaluation)."""
    if not predictions or any(p.get("group") is None for p in predictions):
        return None
    return {p["id"]: p["group"] for p in predictions}


def merge_clusters(found):
    """One {id: group} from several languages' (clusters_of each); None if any is None. Raises
    ValueError where one id lies in two groups: parallel languages share their passages."""
    if not found or None in found:
        return None
    out = {}
    for clusters in found:
        for i, group in clusters.items():
            if out.setdefault(i, group) != group:
                raise ValueError(f"example {i} is in group {out[i]!r} in one language and {group!r} in another")
    return out


def cluster_numbers(ids, clusters):
    """(n,) the cluster of each example as a number, by first appearance; each example its own
    cluster where `clusters` ({id: group}) is None or lacks it."""
    if clusters is None:
        return np.arange(len(ids))
    numbers = {}
    return np.array([numbers.setdefault(clusters.get(i, ("example", i)), len(numbers)) for i in ids], dtype=int)


def cluster_se(x, cluster):
    """The standard error of the mean of x when its examples come in clusters (numbers 0..G-1) that
    are drawn together: sqrt(G/(G-1) sum_g (s_g - m_g mean)^2) / n over cluster sums s_g and sizes m_g;
    with every example its own cluster, the usual sd/sqrt(n). None under two clusters."""
    n_clusters = int(cluster.max()) + 1 if len(cluster) else 0
    if n_clusters < 2:
        return None
    sums = np.bincount(cluster, weights=x, minlength=n_clusters)
    sizes = np.bincount(cluster, minlength=n_clusters)
    return float(math.sqrt(n_clusters / (n_clusters - 1) * ((sums - sizes * x.mean()) ** 2).sum()) / len(x))


def is_parallel(values) -> bool:
    """Whether every language holds the same example ids: the same questions in each language (the
    benchmarks are parallel), resampled together so that an average's interval counts how a hard
    question is hard in every language."""
    ids = [i for i, _ in values.values()]
    return all(len(i) == len(ids[0]) and (i == ids[0]).all() for i in ids[1:])


def resample_indices(rng, n, n_resamples):
    """(n_resamples, n) example positions drawn with replacement: one bootstrap sample a row."""
    return rng.integers(0, n, size=(n_resamples, n))


def _resampled_means(rng, matrix, n_resamples, cluster=None):
    """(n_resamples, L) means of resampled columns of `matrix` (L, n), one draw shared by its rows:
    its clusters (numbers 0..G-1 per column; None: each column its own) drawn with replacement, a
    row's mean being the drawn clusters' total over their size. Counts times sums instead of
    gathering, so 2000 x 12 x 1190 stays small and fast."""
    cluster = np.arange(matrix.shape[1]) if cluster is None else cluster
    n_clusters = int(cluster.max()) + 1
    sums = np.stack([np.bincount(cluster, weights=row, minlength=n_clusters) for row in matrix])  # (L, G)
    sizes = np.bincount(cluster, minlength=n_clusters)
    idx = resample_indices(rng, n_clusters, n_resamples)
    counts = np.bincount((idx + n_clusters * np.arange(n_resamples)[:, None]).ravel(),
                         minlength=n_resamples * n_clusters).reshape(n_resamples, n_clusters)
    return counts @ sums.T / (counts @ sizes)[:, None]


def bootstrap_means(values, groups, n_resamples=2000, seed=0, clusters=None):
    """(n_resamples, len(groups)): per bootstrap sample, each group's mean over its languages of the
    language's resampled mean (languages weigh equally, as in the paper's averages). Examples are
    drawn by cluster (`clusters`, {id: group}: the passage or premise they share; None: each example
    alone). Where every language holds the same ids, one draw serves them all. Otherwise each group
    is drawn as mean_and_se treats it: a group whose languages hold the same ids shares one draw of
    its own, any other group takes each language's own independent draw.

    Args:
        values: {lang: (ids, per-example values)}, e.g. differences between two runs.
        groups: {key: [languages]}; a language alone is a group of one.
    """
    if n_resamples < 1:
        raise ValueError(f"the number of bootstrap resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    stack = lambda langs: np.stack([values[l][1] for l in langs])  # noqa: E731
    number = lambda lang: cluster_numbers(values[lang][0], clusters)  # noqa: E731
    if is_parallel(values):
        langs = list(values)
        means = _resampled_means(rng, stack(langs), n_resamples, number(langs[0]))  # (B, L)
        position = {lang: i for i, lang in enumerate(langs)}
        return np.stack([means[:, [position[l] for l in langs]].mean(1) for langs in groups.values()], 1)
    own = {lang: _resampled_means(rng, stack([lang]), n_resamples, number(lang))[:, 0] for lang in values}
    columns = []
    for langs in groups.values():
        if len(langs) > 1 and is_parallel({l: values[l] for l in langs}):
            columns.append(_resampled_means(rng, stack(langs), n_resamples, number(langs[0])).mean(1))
        else:
            columns.append(np.stack([own[l] for l in langs], 1).mean(1))
    return np.stack(columns, 1)


def mean_and_se(values, languages, clusters=None):
    """(mean over `languages` of their means, its standard error over examples; None under 2),
    examples counted in their clusters (`clusters` {id: group}; None: each example alone).
    Parallel languages: the s.e. of the per-question average across languages, which keeps their
    correlation; otherwise the languages' s.e. combined as independent."""
    subset = {l: values[l] for l in languages}
    if is_parallel(subset):
        ids = next(iter(subset.values()))[0]
        per_question = np.stack([v for _, v in subset.values()]).mean(0)
        return float(per_question.mean()), cluster_se(per_question, cluster_numbers(ids, clusters))
    ses = [cluster_se(v, cluster_numbers(i, clusters)) for i, v in subset.values()]
    se = None if None in ses else float(math.sqrt(sum(s * s for s in ses)) / len(ses))
    return float(np.mean([v.mean() for _, v in subset.values()])), se


def summarize(values, groups, n_resamples=0, seed=0, level=0.95, clusters=None):
    """{key: dict(mean, se, ci)} for each group of `groups`; ci is the percentile bootstrap interval
    at `level` (None without resamples); examples counted in their `clusters` ({id: group})."""
    if not 0 < level < 1:
        raise ValueError(f"the confidence level must be between 0 and 1, got {level}")
    out = {key: dict(zip(("mean", "se"), mean_and_se(values, langs, clusters)), ci=None)
           for key, langs in groups.items()}
    if n_resamples:
        means = bootstrap_means(values, groups, n_resamples, seed, clusters)
        low, high = np.percentile(means, [50 * (1 - level), 50 * (1 + level)], axis=0)
        for i, key in enumerate(groups):
            out[key]["ci"] = [float(low[i]), float(high[i])]
    return out


def with_seeds(cell, spreads, level=0.95):
    """A difference's `cell` (mean, se over examples, as summarize gives it) widened by training seeds:
    `spreads` holds (seed sd, number of seeds) of each side trained with a seed (a base model has none;
    sd None with one seed). Returns dict(seed_se, total_se, df, total_ci): seed_se = sqrt(sum sd²/n)
    (the sides' seeds are independent: different methods train apart), total_se adds it to the
    examples' se in quadrature, df is Welch-Satterthwaite's (the examples' term has infinitely many
    degrees of freedom, each side's n-1; None where that is infinite too, as no seed moved the score),
    total_ci is mean ± Student t quantile(df) × total_se.
    Every value None where a trained side has fewer than 2 seeds (its spread is unmeasured) or the
    examples' se is missing; with no trained side, the interval is the normal one around the se.
    Simulated (seed sd 0.5-3, examples' s.e. 0.3-2; tests/test_stats.py), a 95% interval covered
    93-96.5% of the time with 3 seeds a side or a side of 3 against a base model, and down to 88%
    with 2 seeds against a base model where the seeds dominate; a normal interval covers 88-90% at 3
    seeds, a t on the fewest seeds' n-1 degrees 96-99.6% (too wide)."""
    out = dict(seed_se=None, total_se=None, df=None, total_ci=None)
    if cell.get("se") is None or cell.get("mean") is None or any(sd is None or n < 2 for sd, n in spreads):
        return out
    terms = [(sd * sd / n, n - 1) for sd, n in spreads]
    seed_var = sum(v for v, _ in terms)
    total_var = cell["se"] ** 2 + seed_var
    seeds_df = sum(v * v / df for v, df in terms)
    df = None if seeds_df == 0 else total_var ** 2 / seeds_df  # None: infinite, the normal quantile (JSON has no inf)
    half = float(scipy_stats.t.ppf(0.5 + level / 2, math.inf if df is None else df)) * math.sqrt(total_var)
    return dict(seed_se=math.sqrt(seed_var), total_se=math.sqrt(total_var), df=df,
                total_ci=[cell["mean"] - half, cell["mean"] + half])


def fmt_ci(ci):
    """"[+2.4, +11.5]": an interval, signed, to one decimal; "" where there is none."""
    return "" if ci is None else f"[{ci[0]:+.1f}, {ci[1]:+.1f}]"


def fmt_pm(cell, signed=False, ci=False, se_text=None):
    """A summarize cell as text, the one format every table uses: "45.1 ± 1.2"; `signed` for a
    difference, "+6.9 ± 2.3"; `ci` adds its interval, "+6.9 ± 2.3 [+2.4, +11.5]". The s.e. is left out
    where there is none, `se_text` prints in its place (e.g. marked over a target); "-" with no mean."""
    if cell.get("mean") is None:
        return "-"
    text = f"{cell['mean']:+.1f}" if signed else f"{cell['mean']:.1f}"
    if se_text is not None or cell.get("se") is not None:
        text += f" ± {se_text if se_text is not None else format(cell['se'], '.1f')}"
    interval = fmt_ci(cell.get("ci")) if ci else ""
    return text + (f" {interval}" if interval else "")


def fmt_seeds(cell):
    """"± 2.0 [+3.5, +16.2]": a difference's s.e. and interval over examples and training seeds
    (with_seeds), the one format of them; "" where no seed was counted (a side of one seed, none
    trained, or no seed moved the score)."""
    if not cell.get("seed_se") or cell.get("total_ci") is None:
        return ""
    return f"± {cell['total_se']:.1f} {fmt_ci(cell['total_ci'])}"


def paired_gain(ours, base, languages, english, n_resamples=2000, seed=0, level=0.95, clusters=None):
    """{key: dict(mean, se, ci)} of ours - base per language and for "avg" and "non_en" (languages
    but `english`), on examples both scored; ours and base as {lang: (ids, values)}. Raises
    ValueError where the two did not score the same examples."""
    diffs = {}
    for lang in languages:
        (ids, a), (ids_base, b) = ours[lang], base[lang]
        if len(ids) != len(ids_base) or not (ids == ids_base).all():
            raise ValueError(f"{lang}: the two rows scored different examples ({len(ids)} and {len(ids_base)}), "
                             f"so they cannot be paired")
        diffs[lang] = (ids, a - b)
    groups = dict({lang: [lang] for lang in languages}, avg=list(languages))
    others = [lang for lang in languages if lang != english]
    if 0 < len(others) < len(languages):
        groups["non_en"] = others
    return summarize(diffs, groups, n_resamples, seed, level, clusters)


def gain_table(ours, base, languages, english, metric, label="gain", n_resamples=2000, seed=0, level=0.95,
               clusters=None):
    """(markdown, gain dict): `label` per language, over all languages and over the non-English ones,
    each "+6.9 ± 2.3 [+2.4, +11.5]": the paired mean difference, its s.e. over examples and its
    bootstrap interval. ours and base as {lang: prediction records} (evaluate.py's); clusters as in summarize."""
    read = lambda rows: {l: per_example(rows[l], metric, where=l) for l in languages}  # noqa: E731
    gain = paired_gain(read(ours), read(base), languages, english, n_resamples, seed, level, clusters)
    names = dict({l: l for l in languages}, avg=f"avg ({len(languages)})",
                 non_en=f"non-English avg ({len(languages) - 1})")
    lines = [f"| {metric} {label} | mean ± s.e. | {round(100 * level)}% CI |", "|---|---:|---:|"]
    for key, cell in gain.items():
        bold = "**" if key in ("avg", "non_en") else ""
        lines.append(f"| {bold}{names[key]}{bold} | {fmt_pm(cell, signed=True)} | {fmt_ci(cell['ci'])} |")
    return "\n".join(lines), gain
