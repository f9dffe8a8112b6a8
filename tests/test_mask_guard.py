"""The Triton backend represents one kind of mask: causal, one first key per row (left padding), an
optional sliding window. Those masks give the torch path's answer; every other mask (packed
sequences, a 2D mask with holes, a custom 4D mask) is a clear error, never a silently wrong answer
(before this guard, a packed batch came out 0.24 off with no error)."""
import copy

import pytest
import torch

import adapters
from test_adapters import batch, tiny

# the Triton backend runs compiled on a GPU, interpreted on the CPU (conftest sets TRITON_INTERPRET there)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def both_backends(method="prefix"):
    base = tiny(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2).to(DEVICE)
    torch_model = copy.deepcopy(base)
    adapters.attach(torch_model, method, n_prefix_tokens=3, attn_backend="torch")
    triton_model = copy.deepcopy(torch_model)
    adapters.set_attn_backend(triton_model, "triton")
    return torch_model.eval(), triton_model.eval()


def packed_mask(lengths):
    """Block-diagonal causal 4D mask of sequences packed into one row: (1, 1, T, T) bool."""
    t = sum(lengths)
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return (causal & (doc[:, None] == doc[None, :]))[None, None]


@pytest.mark.parametrize("method", ["prefix", "adapter"])
def test_masks_the_kernel_represents_equal_the_torch_path(method):
    torch_model, triton_model = both_backends(method)
    ids, mask = (t.to(DEVICE) for t in batch())  # left padding
    right = torch.ones_like(mask)
    right[1, -4:] = 0  # right padding, as training batches are collated
    with torch.no_grad():
        for m in (mask, right, None):
            ref = torch_model(ids, attention_mask=m).logits
            out = triton_model(ids, attention_mask=m).logits
            real = (m if m is not None else torch.ones_like(ids)).bool()
            torch.testing.assert_close(out[real], ref[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["packed_positions", "packed_4d", "holed_2d", "custom_4d", "float_bias"])
def test_other_masks_are_a_clear_error_on_triton_and_exact_on_torch(kind):
    torch_model, triton_model = both_backends()
    ids = batch(t=12)[0][:1]
    kw = {}
    restart = torch.cat([torch.arange(5), torch.arange(7)])[None]  # two sequences packed in one row
    if kind == "packed_positions":  # transformers makes restarting positions a block diagonal (without a cache)
        kw = dict(position_ids=restart, use_cache=False)
    elif kind == "packed_4d":
        kw = dict(attention_mask=packed_mask([5, 7]), position_ids=restart)
    elif kind == "holed_2d":
        hole = torch.ones(1, 12, dtype=torch.long)
        hole[0, 4:6] = 0
        kw = dict(attention_mask=hole)
    elif kind == "custom_4d":  # causal, but every query also skips key 2
        custom = torch.ones(12, 12, dtype=torch.bool).tril()
        custom[3:, 2] = False
        kw = dict(attention_mask=custom[None, None])
    else:
        kw = dict(attention_mask=torch.zeros(1, 1, 12, 12).masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(),
                                                                       float("-inf")) + 0.5)
    ids, kw = ids.to(DEVICE), {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in kw.items()}
    with torch.no_grad():
        if kind == "float_bias":
            with pytest.raises(ValueError, match="additive biases"):
                triton_model(ids, **kw)
            return
        with pytest.raises(ValueError, match="attn_backend 'torch'"):
            triton_model(ids, **kw)
        out = torch_model(ids, **kw).logits
    # the torch path applies the mask exactly: for packed input, each sequence as if alone
    if kind.startswith("packed"):
        with torch.no_grad():
            first = torch_model(ids[:, :5]).logits
            second = torch_model(ids[:, 5:]).logits
        torch.testing.assert_close(out, torch.cat([first, second], 1), rtol=1e-4, atol=1e-4)


def test_key_start_check_names_the_offending_key():
    allowed = packed_mask([3, 4])
    with pytest.raises(ValueError, match=r"batch row 0, query 3 does not see key 0"):
        adapters._key_start(allowed)
    left = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    left[1, :, :, :2] = False  # row 1 left-padded by 2: its padded queries see nothing
    assert adapters._key_start(left).tolist() == [0, 2]
    assert adapters._key_start(left) is adapters._key_start(left)  # checked once per mask tensor
