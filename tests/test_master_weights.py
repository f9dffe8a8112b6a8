"""Full fine-tuning in bf16 keeps fp32 master weights: a few AdamW steps at a paper-like lr move the
weights as the same run in fp32 does. Without master weights, bf16 weights round most updates away
(an update under 2^-8 of a weight's magnitude is lost): the bug this guards against changed 13% of
the weights where fp32 changed 99.9%."""
import pytest
import torch
from safetensors.torch import load_file

import train
from test_pipeline import runs_file

pytestmark = pytest.mark.slow


def deltas(tmp_path, tiny_model_dir, shared_data, dtype):
    path = runs_file(tmp_path / dtype, tiny_model_dir, shared_data, method="full", dtype=dtype, lr=1e-5,
                     train_samples=16, max_steps=4, save_every=100)
    train.main(["--run", "tiny", "--runs-file", str(path)])
    trained = load_file(str(tmp_path / dtype / "runs" / "tiny" / "adapter" / "adapter.safetensors"))
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in trained.values())  # the master weights are what is saved
    return {k: trained[k] - base[k.removeprefix("model.") if k not in base else k].float() for k in trained
            if (k if k in base else k.removeprefix("model.")) in base}


def test_bf16_full_finetuning_moves_weights_as_fp32_does(tmp_path, tiny_model_dir, shared_data):
    fp32 = deltas(tmp_path, tiny_model_dir, shared_data, "float32")
    bf16 = deltas(tmp_path, tiny_model_dir, shared_data, "bfloat16")
    assert fp32.keys() == bf16.keys() and len(fp32) > 10
    a, b = torch.cat([v.flatten() for v in fp32.values()]), torch.cat([v.flatten() for v in bf16.values()])
    moved_fp32, moved_bf16 = (a != 0).float().mean().item(), (b != 0).float().mean().item()
    # AdamW's step is about lr * m / sqrt(v) per weight, whatever the gradient's scale: where the bf16
    # gradient keeps the fp32 gradient's sign and rough size, both runs take the same step. Its error
    # comes only from bf16 compute of the gradient (relative error ~2^-8 per op), not from storage.
    rel = ((a - b).norm() / a.norm()).item()
    sign_agree = ((a.sign() == b.sign()) | (a.abs() < 1e-9)).float().mean().item()
    print(f"moved: fp32 {moved_fp32:.4f}, bf16 {moved_bf16:.4f}; delta rel. error {rel:.4f}, "
          f"sign agreement {sign_agree:.4f}")
    # Measured here (tiny Llama, 4 steps, lr 1e-5): bf16 moved 99.93% of the weights against 99.94%,
    # delta error 0.033, signs agree on 99.9%. Without master weights the bf16 run's saved weights are
    # bf16 and most deltas are 0. The bounds leave room for another CPU's bf16 kernels (8x the measured
    # error) and stay far from the bug (most weights unmoved, delta error near 1).
    assert moved_fp32 > 0.99 and moved_bf16 > 0.99
    assert sign_agree > 0.95 and rel < 0.25
