"""The five losses against the values the official code computed (../shared/reference/parity.json)."""

import json

import numpy as np
import pytest
import torch

from loss import (
    ColorConstancyLoss,
    ExposureLoss,
    FocalLoss,
    IlluminationSmoothnessLoss,
    SGZLoss,
    SpatialConsistencyLoss,
    self_target,
)


@pytest.fixture(scope="module")
def ref(shared):
    z = np.load(shared / "reference" / "parity.npz")
    expected = json.loads((shared / "reference" / "parity.json").read_text())["losses"]
    t = {k: torch.from_numpy(z[k]) for k in ("loss_low", "loss_enh", "loss_A", "seg_logits")}
    return t, expected


def close(value, expected):
    assert value == pytest.approx(expected, rel=1e-5, abs=0)


def test_tv(ref):
    t, e = ref
    close(IlluminationSmoothnessLoss()(t["loss_A"]).item(), e["tv_raw"])


@pytest.mark.parametrize("patch", [3, 4, 5])
def test_spatial_consistency(ref, patch):
    t, e = ref
    close(SpatialConsistencyLoss(patch)(t["loss_enh"], t["loss_low"]).mean().item(), e[f"spa8_patch{patch}_mean"])


def test_color(ref):
    t, e = ref
    close(ColorConstancyLoss()(t["loss_enh"]).mean().item(), e["color_mean"])


@pytest.mark.parametrize("level", [0.5, 0.6, 0.7])
def test_exposure(ref, level):
    t, e = ref
    close(ExposureLoss(16, level)(t["loss_enh"]).item(), e[f"exp16_E{level}"])


def test_focal_self_target(ref):
    t, e = ref
    logits = t["seg_logits"]
    close(FocalLoss(gamma=2)(logits, self_target(logits)).item(), e["focal_gamma2_self_target"])


def test_combined_loss_uses_the_papers_weights(ref):
    t, e = ref
    total, terms = SGZLoss()(t["loss_low"], t["loss_enh"], t["loss_A"])
    close(total.item(), e["total_without_seg_E0.6_patch4"])
    close(terms["tv"].item(), 1600 * e["tv_raw"])
    close(terms["color"].item(), 5 * e["color_mean"])
    close(terms["exp"].item(), 10 * e["exp16_E0.6"])
    assert "seg" not in terms


def test_loss_weights_are_options(ref):
    t, e = ref
    total, _ = SGZLoss(tv_weight=0, spa_weight=0, color_weight=0, exp_weight=1, exp_level=0.5)(
        t["loss_low"], t["loss_enh"], t["loss_A"]
    )
    close(total.item(), e["exp16_E0.5"])


def test_color_gradient_is_finite_on_a_grey_image():
    x = torch.full((1, 3, 8, 8), 0.4, requires_grad=True)
    ColorConstancyLoss()(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_spatial_kernels_are_the_eight_neighbours():
    k = SpatialConsistencyLoss().kernels
    assert k.shape == (8, 1, 3, 3)
    assert torch.all(k[:, 0, 1, 1] == 1) and torch.all(k.sum(dim=(1, 2, 3)) == 0)
    assert {tuple((k[i, 0] == -1).nonzero()[0].tolist()) for i in range(8)} == {
        (r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)
    }
