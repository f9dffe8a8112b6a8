"""benchmarks/bench_cpu.py end to end on a tiny random Llama: every cell runs, both dtypes, and what it
writes (JSON and the Markdown section) holds the ratios it printed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_cpu_quick_runs_every_cell_and_writes_its_ratios(tiny_model_dir, shared_data, tmp_path):
    out_json, out_md = tmp_path / "cpu.json", tmp_path / "cpu.md"
    done = subprocess.run([sys.executable, "benchmarks/bench_cpu.py", "--quick", "--models", str(tiny_model_dir),
                           "--data-dir", str(shared_data),
                           "--size", "length=256", "--json", str(out_json), "--results-md", str(out_md)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert result["auto_dtype"] in ("float32", "bfloat16") and result["auto_reason"]
    whats = [r["what"] for r in result["rows"]]
    assert whats[0] == "prefill" and whats[1].startswith("greedy generation")
    assert "train step (prefix), answer-only loss" in whats and result["sizes"]["length"] == 256
    for r in result["rows"]:
        assert r["fp32_s"] > 0 and r["bf16_s"] > 0 and r["ratio"] == pytest.approx(r["bf16_s"] / r["fp32_s"])
    quality, = result["quality"]
    assert 0 <= quality["next_token_argmax_agreement"] <= 1 and quality["n_questions"] == 4
    assert [c["what"].split(":")[0] for c in result["costs"]][:3] == [
        "generation", "prefill of 4 prompts in batches of 2", "XNLI choice scoring, 4 rows"]
    choice = result["costs"][2]
    assert "same choice on 4/4" in choice["note"] and choice["ratio"] == pytest.approx(choice["a_s"] / choice["b_s"])
    loss, = result["loss_check"]
    assert loss["answer_loss"] == pytest.approx(loss["labels_loss"], abs=1e-5)  # the two losses are one loss
    md = out_md.read_text()
    assert md.count("| prefill |") == 1 and f"{result['rows'][0]['ratio']:.2f} |" in md
