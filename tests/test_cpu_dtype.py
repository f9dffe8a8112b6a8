"""dtype "auto" on the CPU: bf16 where the processor multiplies bf16 natively, fp32 elsewhere; the
choice is recorded with results; trainable tensors stay fp32 beside a bf16 frozen base."""
import json
import math
import time

import pytest
import torch
from safetensors.torch import load_file

import adapters
import config as C
import evaluate
import models
import train
from test_pipeline import runs_file


@pytest.fixture
def fresh_decision(monkeypatch):
    """cpu_bf16_native computes once per process: clear it before and after a test that fakes the CPU."""
    models.cpu_bf16_native.cache_clear()
    yield monkeypatch
    models.cpu_bf16_native.cache_clear()


def fake_cpu(monkeypatch, machine="x86_64", amx=False, avx512_bf16=False, flags=None, speedup=None):
    monkeypatch.setattr(models.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(models, "_cpu_flags", lambda: flags)
    def probe():
        assert speedup is not None, "the probe ran where the flags should have decided"
        return speedup
    monkeypatch.setattr(models, "_bf16_speedup", probe)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


@pytest.mark.parametrize("cpu, want", [
    (dict(amx=True), (True, "cpu has AMX")),
    (dict(avx512_bf16=True), (True, "cpu has avx512_bf16")),
    (dict(flags={"avx2", "avx512f", "avx512_bf16"}), (True, "cpu has avx512_bf16")),  # torch's checks missing
    (dict(flags={"avx2", "fma"}), (False, "cpu has neither AMX nor avx512_bf16: bf16 matmuls would be emulated")),
    (dict(machine="aarch64", flags={"asimd", "bf16"}, speedup=2.5), (True, "measured: a bf16 matmul runs 2.50x as fast as fp32")),
    (dict(machine="aarch64", flags={"asimd"}, speedup=0.3), (False, "measured: a bf16 matmul runs 0.30x as fast as fp32")),
    (dict(flags=None, speedup=1.0), (False, "measured: a bf16 matmul runs 1.00x as fast as fp32")),  # no /proc/cpuinfo
])
def test_cpu_decision(fresh_decision, cpu, want):
    fake_cpu(fresh_decision, **cpu)
    assert models.cpu_bf16_native() == want
    assert models.auto_dtype("cpu") == (torch.bfloat16 if want[0] else torch.float32, want[1])


def test_capped_isa_is_measured_not_read_from_flags(fresh_decision):
    fake_cpu(fresh_decision, amx=True, speedup=0.5)
    fresh_decision.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert models.cpu_bf16_native() == (False, "ONEDNN_MAX_CPU_ISA=AVX2, measured: a bf16 matmul runs 0.50x as fast as fp32")


def test_probe_is_short():
    start = time.perf_counter()
    assert models._bf16_speedup() > 0
    assert time.perf_counter() - start < 5  # 0.1-0.4 s measured; loose for a loaded machine


def test_cuda_is_bf16_and_run_dtype_overrides(fresh_decision, tmp_path):
    fake_cpu(fresh_decision, avx512_bf16=True)
    assert models.auto_dtype("cuda") == (torch.bfloat16, "cuda")
    cfg = C.RunConfig(name="t", model="smollm2-135m", method="prefix", task="xquad", out_dir=str(tmp_path))
    cpu = not torch.cuda.is_available()
    assert C.device_and_dtype(cfg)[1] == torch.bfloat16
    assert C.provenance(cfg)["dtype"] == "bfloat16"
    if cpu:
        assert models.dtype_message("auto", "cpu", torch.bfloat16) == "dtype auto -> bfloat16 (cpu has avx512_bf16)"
    cfg.dtype = "float32"
    assert C.device_and_dtype(cfg)[1] == torch.float32 and C.provenance(cfg)["dtype"] == "float32"
    assert models.dtype_message("float32", "cpu", torch.float32) == "dtype float32 (set by the run)"


def test_cached_results_of_another_dtype_are_stale(tmp_path):
    cfg = C.RunConfig(name="t", model="smollm2-135m", method="prefix", task="xquad", out_dir=str(tmp_path))
    extra = dict(C.provenance(cfg), adapter_sha256=None, fit_languages=None, dtype="bfloat16")
    path = tmp_path / "en.json"
    path.write_text(json.dumps(extra))
    assert evaluate.changed_settings(path, extra) == {}
    # written before the dtype was recorded, on the CPU under auto: that was fp32
    old = {k: v for k, v in extra.items() if k != "dtype"}
    path.write_text(json.dumps(dict(old, device="cpu (x86_64)")))
    assert evaluate.changed_settings(path, extra) == {"computed_in": ("float32", "bfloat16")}
    path.write_text(json.dumps(dict(old, device="NVIDIA H100 80GB HBM3")))
    assert evaluate.changed_settings(path, extra) == {}


@pytest.mark.parametrize("method", ["prefix", "adapter", "soft_prompt", "lora"])
def test_bf16_base_trains_fp32_adapter(tiny_model_dir, method):
    model, tokenizer = models.load_model(str(tiny_model_dir), dtype=torch.bfloat16)
    adapters.attach(model, method, n_prefix_tokens=4, attn_backend="torch")
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    ids, mask = train.pad_batch([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]], tokenizer.pad_token_id)
    labels, _ = train.pad_batch([[-100, -100, -100, -100, 9, 10], [-100, -100, 13, 14]], -100)
    model.train()
    loss = train.answer_loss(model, ids, mask, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in trainable.values())
    optimizer.step()
    state = [s for group in optimizer.state.values() for s in group.values() if torch.is_tensor(s) and s.ndim]
    assert state and all(s.dtype == torch.float32 for s in state)  # AdamW's moments: fp32 too
    assert all(p.dtype == torch.float32 for p in trainable.values())
    # LoRA's B starts at zero, so its A gets no gradient in the first step; everything else moves
    moved = [n for n, p in trainable.items() if not torch.equal(p, before[n])]
    assert moved and (method == "lora" or len(moved) == len(trainable))


@pytest.mark.slow
def test_train_and_evaluate_print_and_record_the_auto_choice(tmp_path, tiny_model_dir, shared_data, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("dtype auto is bf16 on CUDA; this checks the CPU's choice")
    monkeypatch.setattr(models, "cpu_bf16_native", lambda: (True, "cpu has avx512_bf16"))
    path = runs_file(tmp_path, tiny_model_dir, shared_data, train_samples=8, max_steps=2, eval_samples=4,
                     eval_languages=["en"])
    cfg = C.get_run("tiny", path=path)
    train.train(cfg)
    assert "dtype auto -> bfloat16 (cpu has avx512_bf16)" in capsys.readouterr().out
    log = json.loads((cfg.run_dir / "train_log.json").read_text())
    assert log["dtype"] == "bfloat16" and log["config"]["dtype"] == "auto" and math.isfinite(log["final_loss"])
    assert all(t.dtype == torch.float32 for t in load_file(str(cfg.run_dir / "adapter" / "adapter.safetensors")).values())
    evaluate.run(cfg)
    assert "dtype auto -> bfloat16 (cpu has avx512_bf16)" in capsys.readouterr().out
    assert json.loads((cfg.run_dir / "eval" / "prefix" / "en.json").read_text())["dtype"] == "bfloat16"
    # on a CPU without native bf16, auto is fp32 there: the bf16 results are not reused as if they were its own
    monkeypatch.setattr(models, "cpu_bf16_native", lambda: (False, "cpu has neither AMX nor avx512_bf16"))
    with pytest.raises(ValueError, match="computed_in 'bfloat16' -> 'float32'"):
        evaluate.run(cfg)
