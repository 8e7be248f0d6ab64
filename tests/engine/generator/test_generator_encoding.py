"""Label encoding of the joint generator: analog bits and one-hot round-trip and tolerate noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from satsynth.data.classes import IGNORE_INDEX
from satsynth.errors import SatSynthError
from satsynth.generator.encoding import LabelEncoding, bit_count


def every_case(test):
    """Check ``test`` on both encodings, 2 to 64 classes and random masks (25 draws)."""
    return settings(max_examples=25, deadline=None)(
        given(k=st.integers(2, 64), seed=st.integers(0, 10_000),
              kind=st.sampled_from(["bits", "onehot"]))(test))


def _mask(k: int, seed: int, shape=(2, 5, 7)) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, k, shape)).to(torch.uint8)


@every_case
def test_encode_decode_round_trips_exactly(k, seed, kind):
    enc = LabelEncoding(kind, k)
    mask = _mask(k, seed)
    x = enc.encode(mask)
    assert x.shape == (2, enc.channels, 5, 7)
    assert set(x.unique().tolist()) <= {-1.0, 1.0}
    out, invalid = enc.decode(x)
    assert invalid == 0
    assert torch.equal(out, mask)


@every_case
def test_decoding_is_robust_to_noise_within_the_margin(k, seed, kind):
    enc = LabelEncoding(kind, k)
    mask = _mask(k, seed)
    x = enc.encode(mask)
    g = torch.Generator().manual_seed(seed)
    # bits: any noise below 1 per channel keeps every sign; one-hot: below 1 keeps the argmax
    noise = (torch.rand(x.shape, generator=g) * 2 - 1) * 0.99
    out, invalid = enc.decode(x + noise, margin=None)
    assert invalid == 0
    assert torch.equal(out, mask)
    # within the undecided margin (noise below 0.5) every pixel is decided and exact
    out, ignored = enc.decode(x + noise * (0.49 / 0.99))
    assert ignored == 0 and torch.equal(out, mask)


def test_bit_channels_are_ceil_log2_k():
    assert [bit_count(k) for k in (2, 3, 4, 5, 8, 9, 64, 65)] == [1, 2, 2, 3, 3, 4, 6, 7]
    assert LabelEncoding("onehot", 6).channels == 6


def test_invalid_codes_go_to_the_nearest_valid_code_and_are_counted():
    enc = LabelEncoding("bits", 5)  # 3 bits: codes 5, 6, 7 are invalid
    book = enc.codebook()
    # (0.1, 0.9, 0.9) thresholds to code 7 (invalid); the nearest valid code flips only the
    # weak first bit: index 3 = (-, +, +)
    x = torch.tensor([0.1, 0.9, 0.9]).view(1, 3, 1, 1)
    out, invalid = enc.decode(x, margin=None)
    assert invalid == 1 and int(out) == 3
    assert torch.equal(book[3], torch.tensor([-1.0, 1.0, 1.0]))
    # a clean valid code is not counted
    out, invalid = enc.decode(book[4].view(1, 3, 1, 1))
    assert invalid == 0 and int(out) == 4


def test_undecided_bits_and_codes_of_no_class_decode_to_ignore():
    """Where Building (001) meets Land (010) the two low bits are undecided: they must become
    ignore (255), never Road (011) or Unlabeled (000)."""
    enc = LabelEncoding("bits", 6)  # 3 bits: codes 6 and 7 are no class
    pixels = torch.tensor([
        [-0.9, -0.8, 0.9],   # 001 Building, decided
        [-0.9, 0.8, -0.9],   # 010 Land, decided
        [-0.9, 0.3, 0.2],    # between them: |bit| < 0.5 on two bits -> ignore
        [-0.9, 0.9, 0.45],   # one bit undecided: would read 011 (Road) -> ignore
        [-0.7, -0.1, -0.9],  # would read 000 (Unlabeled) -> ignore
        [0.9, 0.9, -0.9],    # 110 = 6: decided but no class -> ignore
        [0.9, -0.9, 0.5],    # 101 = 5, every bit at the margin: decided
    ])
    out, ignored = enc.decode(pixels.T.reshape(1, 3, 1, 7))
    assert out.dtype == torch.uint8
    assert out.view(-1).tolist() == [1, 2, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX,
                                     IGNORE_INDEX, 5]
    assert ignored == 4
    hot = LabelEncoding("onehot", 3)  # one positive channel decides; none or two do not
    v = torch.tensor([[0.9, -0.9, -0.9], [0.9, 0.8, -0.9], [-0.9, -0.9, -0.6],
                      [0.9, -0.2, -0.9]])
    out, ignored = hot.decode(v.T.reshape(1, 3, 1, 4))
    assert out.view(-1).tolist() == [0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert ignored == 3


def test_ignore_pixels_encode_to_the_midpoint_and_bad_indices_are_rejected():
    enc = LabelEncoding("bits", 6)
    m = torch.tensor([[0, IGNORE_INDEX], [5, 1]], dtype=torch.uint8)
    x = enc.encode(m)
    assert torch.all(x[:, 0, 1] == 0) and torch.all(x[:, 1, 0].abs() == 1)
    with pytest.raises(SatSynthError, match="label index 6 is outside 0..5"):
        enc.encode(torch.tensor([[6]]))
    with pytest.raises(SatSynthError, match="unknown label encoding"):
        LabelEncoding("gray", 4)
