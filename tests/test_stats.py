"""stats.paired_gain: the gain evaluate.py prints, against a direct computation."""
import json

import numpy as np
import pytest

import stats


def rows(rng, languages, n, shift):
    ids = np.array([f"q{i:03d}" for i in range(n)])
    base = {l: (ids, rng.uniform(0, 100, n)) for l in languages}
    ours = {l: (ids, v + shift + rng.normal(0, 5, n)) for l, (ids, v) in base.items()}
    return ours, base


def test_paired_gain_means_se_and_groups():
    rng = np.random.default_rng(0)
    languages = ["en", "de", "zh"]
    ours, base = rows(rng, languages, 200, shift=3.0)
    gain = stats.paired_gain(ours, base, languages, "en", n_resamples=500)
    assert set(gain) == {"en", "de", "zh", "avg", "non_en"}
    d = {l: ours[l][1] - base[l][1] for l in languages}
    assert gain["de"]["mean"] == pytest.approx(d["de"].mean())
    assert gain["de"]["se"] == pytest.approx(d["de"].std(ddof=1) / np.sqrt(200))
    per_question = (d["de"] + d["zh"]) / 2  # parallel languages: the s.e. of the per-question mean
    assert gain["non_en"]["mean"] == pytest.approx(per_question.mean())
    assert gain["non_en"]["se"] == pytest.approx(per_question.std(ddof=1) / np.sqrt(200))
    low, high = gain["avg"]["ci"]
    assert low < gain["avg"]["mean"] < high and low < 3.0 < high


def test_paired_gain_refuses_other_examples():
    rng = np.random.default_rng(1)
    ours, base = rows(rng, ["en", "de"], 20, shift=0.0)
    ids, values = base["de"]
    base["de"] = (ids[:-1], values[:-1])
    with pytest.raises(ValueError, match="de: the two rows scored different examples"):
        stats.paired_gain(ours, base, ["en", "de"], "en")


def test_per_example_sorts_by_id_and_reads_accuracy():
    ids, values = stats.per_example([dict(id="b", correct=True), dict(id="a", correct=False)], "accuracy")
    assert list(ids) == ["a", "b"] and list(values) == [0.0, 100.0]
    with pytest.raises(ValueError, match="repeated"):
        stats.per_example([dict(id="a", f1=1.0), dict(id="a", f1=2.0)], "f1")


def test_gain_table_reads_records_and_prints_every_row():
    records = lambda values: [dict(id=f"q{i}", f1=v) for i, v in enumerate(values)]  # noqa: E731
    base = {"en": records([0, 10, 20, 30]), "de": records([0, 0, 50, 50])}
    ours = {"en": records([10, 20, 30, 40]), "de": records([0, 10, 50, 70])}
    md, gain = stats.gain_table(ours, base, ["en", "de"], "en", "f1", n_resamples=200)
    assert gain["en"]["mean"] == pytest.approx(10.0) and gain["en"]["se"] == pytest.approx(0.0)
    assert gain["de"]["mean"] == pytest.approx(7.5)
    assert gain["non_en"]["mean"] == pytest.approx(7.5) and gain["avg"]["mean"] == pytest.approx(8.75)
    assert "| en | +10.0 ± 0.0 |" in md and "non-English avg (1)" in md and md.count("\n") == 5


def test_fmt_pm_is_the_one_mean_se_interval_format():
    cell = dict(mean=6.93, se=2.31, ci=[2.44, 11.5])
    assert stats.fmt_pm(cell) == "6.9 ± 2.3"
    assert stats.fmt_pm(cell, signed=True, ci=True) == "+6.9 ± 2.3 [+2.4, +11.5]"
    assert stats.fmt_pm(dict(mean=-4.0, se=None, ci=[-11.0, 3.0]), signed=True, ci=True) == "-4.0 [-11.0, +3.0]"
    assert stats.fmt_pm(dict(mean=1.0, se=3.6, ci=None), signed=True, ci=True) == "+1.0 ± 3.6"
    assert stats.fmt_pm(cell, signed=True, se_text="**2.3 > 1.5**") == "+6.9 ± **2.3 > 1.5**"
    assert stats.fmt_pm(dict(mean=None, se=None, ci=None)) == "-"
    assert stats.fmt_ci(None) == "" and stats.fmt_ci([-0.04, 0.05]) == "[-0.0, +0.1]"


def test_with_seeds_adds_the_seed_spread_and_counts_only_trained_sides():
    cell = dict(mean=5.5, se=1.1, ci=[3.3, 7.5])
    none = stats.with_seeds(cell, [(3.1, 3), (None, 1)])  # a side of one seed: its spread is unmeasured
    assert none == dict(seed_se=None, total_se=None, df=None, total_ci=None)
    assert stats.with_seeds(dict(cell, se=None), [(3.1, 3)])["total_ci"] is None
    alone = stats.with_seeds(cell, [])  # no trained side (base against base): the normal interval
    assert alone["seed_se"] == 0 and alone["total_se"] == pytest.approx(1.1) and alone["df"] is None  # not inf: JSON
    assert json.loads(json.dumps(stats.with_seeds(cell, [(0.0, 3)]), allow_nan=False))["df"] is None
    assert alone["total_ci"] == pytest.approx([5.5 - 1.959964 * 1.1, 5.5 + 1.959964 * 1.1])
    # the examples' s.e. negligible, one trained side of 3 seeds: the plain t interval on 2 degrees of freedom
    one = stats.with_seeds(dict(mean=5.0, se=1e-9), [(2.0, 3)])
    assert one["df"] == pytest.approx(2.0) and one["total_se"] == pytest.approx(2.0 / np.sqrt(3))
    assert one["total_ci"][1] - 5.0 == pytest.approx(4.302653 * 2.0 / np.sqrt(3))


@pytest.mark.parametrize("n_a, n_b", [(3, 3), (3, 0)])
def test_with_seeds_interval_covers_at_about_its_level(n_a, n_b):
    """Simulated: a difference of 0 between two methods whose seeds move them (sd 3) on examples that
    add an error of s.e. 1; n_b 0 is a base model. The 95% interval should cover 0 about 95% of the
    time. A normal interval covers 88-90% here (too narrow), the t on the fewest seeds' degrees of
    freedom over 99% (too wide); Welch-Satterthwaite measured 0.93-0.95."""
    rng = np.random.default_rng(0)
    covered, n = 0, 3000
    for _ in range(n):
        a, b = rng.normal(0, 3, n_a), rng.normal(0, 3, n_b)
        mean = a.mean() - (b.mean() if n_b else 0) + rng.normal(0, 1)
        spreads = [(a.std(ddof=1), n_a)] + ([(b.std(ddof=1), n_b)] if n_b else [])
        low, high = stats.with_seeds(dict(mean=mean, se=1.0), spreads)["total_ci"]
        covered += low <= 0 <= high
    assert 0.91 <= covered / n <= 0.975
