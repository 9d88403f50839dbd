"""SGZ's zero-reference losses and the module that combines them with the paper's weights.

Each loss matches the official `Myloss.py` / `modeling/fpn.py` numerically (tests/test_loss.py pins
them to the official code's values in ../shared/reference/parity.json),
with one deliberate fix: the colour loss has an eps under its square root, so its gradient is
finite on a perfectly grey image (the official one is NaN there).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

# The eight neighbour offsets (dy, dx) of the spatial-consistency loss and their weights:
# the four direct neighbours count 1, the four diagonal ones 0.5 (official L_spa8).
NEIGHBOURS = [
    ((0, -1), 1.0),
    ((0, 1), 1.0),
    ((-1, 0), 1.0),
    ((1, 0), 1.0),
    ((-1, -1), 0.5),
    ((-1, 1), 0.5),
    ((1, -1), 0.5),
    ((1, 1), 0.5),
]


class ColorConstancyLoss(nn.Module):
    """Per image: sqrt(Drg^2 + Drb^2 + Dgb^2 + eps), D the squared differences of channel means. (B, 1, 1, 1)"""

    def __init__(self, eps=1e-12):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        mr, mg, mb = x.mean(dim=(2, 3), keepdim=True).split(1, dim=1)
        d_rg, d_rb, d_gb = (mr - mg) ** 2, (mr - mb) ** 2, (mb - mg) ** 2
        return torch.sqrt(d_rg**2 + d_rb**2 + d_gb**2 + self.eps)


class SpatialConsistencyLoss(nn.Module):
    """8-neighbour spatial consistency of patch-pooled grey levels, enhanced vs input. (B, 1, h, w)"""

    def __init__(self, patch_size=4):
        super().__init__()
        kernels = torch.zeros(len(NEIGHBOURS), 1, 3, 3)
        for i, ((dy, dx), _) in enumerate(NEIGHBOURS):
            kernels[i, 0, 1, 1] = 1.0
            kernels[i, 0, 1 + dy, 1 + dx] = -1.0
        self.register_buffer("kernels", kernels, persistent=False)
        self.register_buffer("weights", torch.tensor([w for _, w in NEIGHBOURS]).view(1, -1, 1, 1), persistent=False)
        self.patch_size = patch_size

    def forward(self, org, enhance):
        # The neighbour differences are linear, so differencing once before the conv is the same
        # as differencing the two convolved maps (as the official code does), at half the cost.
        diff = F.avg_pool2d(org.mean(1, keepdim=True) - enhance.mean(1, keepdim=True), self.patch_size)
        d = F.conv2d(diff, self.kernels, padding=1)  # (B, 8, h, w)
        return (d * d * self.weights).sum(1, keepdim=True)


class ExposureLoss(nn.Module):
    """Mean squared distance of patch-mean grey levels from the well-exposedness level E. Scalar."""

    def __init__(self, patch_size=16, level=0.6):
        super().__init__()
        self.patch_size = patch_size
        self.level = level

    def forward(self, x):
        mean = F.avg_pool2d(x.mean(1, keepdim=True), self.patch_size)
        return ((mean - self.level) ** 2).mean()


class IlluminationSmoothnessLoss(nn.Module):
    """Total variation of the curve map, normalised as in the official L_TV. Scalar."""

    def forward(self, x):
        b, _, h, w = x.shape
        h_tv = (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).sum()
        w_tv = (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).sum()
        return 2 * (h_tv / ((h - 1) * w) + w_tv / (h * (w - 1))) / b


class FocalLoss(nn.Module):
    """Focal loss on class logits (B, C, h, w) against integer targets (B, h, w); mean over pixels."""

    def __init__(self, gamma=2.0, eps=1e-7):
        super().__init__()
        self.gamma = gamma
        self.eps = eps

    def forward(self, logits, target):
        p = F.softmax(logits, dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        p = p.clamp(self.eps, 1.0 - self.eps)
        return (-((1 - p) ** self.gamma) * p.log()).mean()


def self_target(logits):
    """The semantic loss's pseudo-label: the segmentation net's own per-pixel argmax (no gradient)."""
    return logits.detach().argmax(dim=1)


class SGZLoss(nn.Module):
    """1600*TV(r) + mean(spa) + 5*mean(colour) + 10*exposure + 0.1*semantic (the paper's weights).

    forward(low, enhanced, curve_map) returns (total, {term: weighted value}); the semantic term is
    left out (and its net never run) when `seg_net` is None or its weight is 0.
    """

    def __init__(
        self,
        seg_net=None,
        tv_weight=1600.0,
        spa_weight=1.0,
        color_weight=5.0,
        exp_weight=10.0,
        seg_weight=0.1,
        patch_size=4,
        exp_level=0.6,
        exp_patch=16,
        focal_gamma=2.0,
    ):
        super().__init__()
        self.weights = {
            "tv": tv_weight,
            "spa": spa_weight,
            "color": color_weight,
            "exp": exp_weight,
            "seg": seg_weight if seg_net is not None else 0.0,
        }
        self.tv = IlluminationSmoothnessLoss()
        self.spa = SpatialConsistencyLoss(patch_size)
        self.color = ColorConstancyLoss()
        self.exp = ExposureLoss(exp_patch, exp_level)
        self.focal = FocalLoss(focal_gamma)
        self.seg_net = seg_net if self.weights["seg"] else None

    def semantic(self, enhanced):
        logits = self.seg_net(enhanced).float()
        return self.focal(logits, self_target(logits))

    def forward(self, low, enhanced, curve_map):
        # Losses in fp32 even under autocast: squares of small differences underflow in half precision.
        low, enhanced, curve_map = low.float(), enhanced.float(), curve_map.float()
        terms = {
            "tv": self.weights["tv"] * self.tv(curve_map),
            "spa": self.weights["spa"] * self.spa(enhanced, low).mean(),
            "color": self.weights["color"] * self.color(enhanced).mean(),
            "exp": self.weights["exp"] * self.exp(enhanced),
        }
        if self.seg_net is not None:
            terms["seg"] = self.weights["seg"] * self.semantic(enhanced)
        return sum(terms.values()), terms
