"""Tests for chtorch.train.lr_schedules: hand-computed values at known steps."""

from __future__ import annotations

import math

import pytest

from chtorch.train import lr_schedules as S

approx = pytest.approx


def test_linear_decay_hand_values():
    # the MLP recipe: 0.025 -> 2.5e-4
    assert S.linear_decay(0, 100, 0.025, 2.5e-4) == approx(0.025)
    assert S.linear_decay(50, 100, 0.025, 2.5e-4) == approx(0.012625)
    assert S.linear_decay(100, 100, 0.025, 2.5e-4) == approx(2.5e-4)
    assert S.linear_decay(200, 100, 0.025, 2.5e-4) == approx(2.5e-4)


def test_noam_hand_values():
    # d_model 512, warmup 4000, scale 2 (IWSLT recipe): peak 2 * 512^-0.5 * 4000^-0.5
    assert S.noam(0, 512, 4000, 2.0) == 0.0
    assert S.noam(4000, 512, 4000, 2.0) == approx(1.3975424859e-3)
    assert S.noam(1000, 512, 4000, 2.0) == approx(3.4938562148e-4)  # linear ramp: 1/4 of the peak
    assert S.noam(16000, 512, 4000, 2.0) == approx(6.9877124296e-4)  # 1/sqrt(step) decay: half the peak


def test_cosine_with_warmup_hand_values():
    values = [S.cosine_with_warmup(s, 1000, 100) for s in (0, 50, 100, 325, 550, 1000, 2000)]
    assert values == approx([0.0, 0.5, 1.0, 0.1 + 0.45 * (1 + math.sqrt(0.5)), 0.55, 0.1, 0.1])
    assert S.cosine_with_warmup(325, 1000, 100) == approx(0.8681980515)
    assert S.cosine_with_warmup(10, 1000, 0) == approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.01)))
