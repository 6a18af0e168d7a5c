"""Scans continued from a state (generation token by token) against float64 loops.

Scanning a sequence in pieces, each piece from the final state of the previous one,
must give the outputs and the final state of a plain step-by-step loop over the whole
sequence.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scan_cases import relative_error, selective_inputs, ssd_inputs
from torch import Tensor

from captum_mamba.ops import selective_scan_with_state, ssd_scan_with_state


def _selective_loop(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor):
    """``h[t] = exp(dt A) h[t-1] + dt x B``, ``y = C . h``, one time step at a time."""
    batch, length, channels = x.shape
    h = x.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None]
        ys.append((h * C[:, t, None]).sum(-1))
    return torch.stack(ys, 1), h


def _ssd_loop(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor):
    """The Mamba-2 recurrence per head, one time step at a time (head ``h`` reads group
    ``h // (heads // groups)`` of ``B`` and ``C``)."""
    batch, length, heads, head_dim = x.shape
    group = torch.arange(heads) // (heads // B.shape[2])
    h = x.new_zeros(batch, heads, head_dim, B.shape[-1])
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[..., None, None]
        drive = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, group][:, :, None, :]
        h = decay * h + drive
        ys.append((h * C[:, t, group][:, :, None, :]).sum(-1))
    return torch.stack(ys, 1), h


def _pieces(length: int, cuts: list[int]) -> list[slice]:
    bounds = [0, *cuts, length]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("cuts", [[], [1], [5, 6], [3, 9, 10]], ids=str)
def test_selective_scan_in_pieces_equals_loop(cuts: list[int]) -> None:
    x, dt, A, B, C = selective_inputs(2, 13, 5, 3, seed=len(cuts))
    expected_y, expected_h = _selective_loop(x, dt, A, B, C)
    state, ys = None, []
    for part in _pieces(13, cuts):
        y, state = selective_scan_with_state(
            x[:, part], dt[:, part], A, B[:, part], C[:, part], state, chunk_elements=2 * 5 * 3 * 4
        )
        ys.append(y)
    assert relative_error(torch.cat(ys, 1), expected_y) <= 1e-12
    assert relative_error(state, expected_h) <= 1e-12


@pytest.mark.parametrize("cuts", [[], [1], [4, 5], [2, 7, 11]], ids=str)
@pytest.mark.parametrize("groups", [1, 2])
def test_ssd_scan_in_pieces_equals_loop(cuts: list[int], groups: int) -> None:
    x, dt, A, B, C = ssd_inputs(2, 13, 4, 3, groups, 5, seed=len(cuts) + groups)
    expected_y, expected_h = _ssd_loop(x, dt, A, B, C)
    state, ys = None, []
    for part in _pieces(13, cuts):
        y, state = ssd_scan_with_state(
            x[:, part], dt[:, part], A, B[:, part], C[:, part], chunk_size=4, state=state
        )
        ys.append(y)
    assert relative_error(torch.cat(ys, 1), expected_y) <= 1e-12
    assert relative_error(state, expected_h) <= 1e-12


def test_scans_with_state_refuse_mixed_dtypes() -> None:
    x, dt, A, B, C = selective_inputs(1, 4, 2, 2, seed=0)
    with pytest.raises(TypeError, match="one dtype"):
        selective_scan_with_state(x.float(), dt, A, B, C)
    x, dt, A, B, C = ssd_inputs(1, 4, 2, 2, 1, 2, seed=0)
    with pytest.raises(TypeError, match="one dtype"):
        ssd_scan_with_state(x, dt.float(), A, B, C)
