"""torch.hub entry points.

net = torch.hub.load("<owner>/<repo>", "sgz")                        # from GitHub (downloads the repository)
net = torch.hub.load("path/to/clone", "sgz", source="local")         # from a clone, offline
enhanced, curve_map = net(image)                                      # image (N, 3, H, W) RGB in [0, 1]
"""

from pathlib import Path

import model
import validate

dependencies = ["torch"]

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weight" / "sgz.pth"


def sgz(pretrained=True, scale_factor=12, weights=None):
    """The SGZ enhancement network (model.EnhanceNet) in eval mode.

    pretrained: load the shipped weights (weight/sgz.pth); False gives a freshly initialised network.
    scale_factor: the curve map is computed on a 1/s copy of the image and resized back (12 as test.py).
    weights: the path of any checkpoint to load instead (ours, or the paper's Epoch99.pth); its layer
    type is read from the file."""
    scale_factor = validate.positive_int(scale_factor, "scale_factor")
    if weights is None and pretrained:
        weights = SHIPPED_WEIGHTS
    if weights is None:
        return model.EnhanceNet(scale_factor=scale_factor).eval()
    return model.load_enhance_net(weights, scale_factor=scale_factor).eval()
