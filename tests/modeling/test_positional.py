"""A-FINE's 1-D positional-embedding resampling."""

import numpy as np
import pytest
import torch

from modeling_afine import resample_position_table

from .reference_afine import resample_rows


def test_identity_at_native_length():
    table = torch.randn(50, 24)
    out = resample_position_table(table, 50)
    assert torch.equal(out, table)


@pytest.mark.parametrize("length", [5, 13, 49, 51, 97, 257])
def test_matches_spec_formula(length):
    table = torch.randn(50, 16, generator=torch.Generator().manual_seed(length))
    ours = resample_position_table(table, length).double().numpy()
    expected = resample_rows(table.double().numpy(), length)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=3e-5)


def test_columns_do_not_mix_and_cls_is_interpolated():
    table = torch.zeros(50, 4)
    table[:, 2] = torch.arange(50, dtype=torch.float32)
    out = resample_position_table(table, 101)
    assert torch.count_nonzero(out[:, [0, 1, 3]]) == 0
    # The CLS row is resampled together with the grid: row 0 of the output is not the stored CLS entry.
    table2 = torch.randn(50, 4)
    assert not torch.allclose(resample_position_table(table2, 101)[0], table2[0])


def test_gradient_reaches_table():
    table = torch.randn(50, 8, requires_grad=True)
    resample_position_table(table, 77).sum().backward()
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_embeddings_use_1d_resampling(model):
    """The backbone's embedding layer applies the 1-D scheme, not transformers' 2-D interpolation."""
    emb = model.vision_model.embeddings
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        got = emb(x)
        patches = emb.patch_embedding(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([emb.class_embedding.expand(1, 1, -1), patches], dim=1)
        table = emb.position_embedding.weight.double().numpy()
        expected = tokens + torch.from_numpy(resample_rows(table, tokens.shape[1])).float()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
