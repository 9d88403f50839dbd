"""SGZ networks: the enhancement-factor net with its recurrent curve, and the frozen segmentation net.

Read top to bottom:
1. `DepthwiseSeparableConv` / `PlainConv`: the two layer types (`--conv_type dsc | tc`).
2. `EnhanceNet`: 7 layers -> 3-channel curve map r = tanh(...), computed on a 1/s copy of the
   image and resized back to exactly H x W; then x <- x + r * (x^2 - x), 8 times.
3. `load_enhance_net`: checkpoint loading with one clear error (a UserError) naming the file.
4. `SegmentationNet`: ResNet-50 C2..C5 + the official FPN head, frozen (used by the semantic loss).

State-dict keys are the official ones (`e_conv{1..7}.depth_conv|point_conv.weight|bias`, or
`e_conv{i}.conv.*` for plain convs), so weights move both ways between this code and the paper's.
"""

import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import validate
from curve_kernel import NUM_CURVE_STEPS  # a constant of the CPU kernel
from runtime import UserError, socket_timeout

NUM_FEATURES = 32


def get_device(name="auto"):
    """'auto' picks cuda, then mps, then cpu; anything else is passed to torch.device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------
# Enhancement-factor network
# ---------------------------------------------------------------------------------------------
class DepthwiseSeparableConv(nn.Module):
    """3x3 depthwise conv then 1x1 pointwise conv, both with bias (the paper's `DSC`)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.depth_conv = nn.Conv2d(in_ch, in_ch, kernel_size=3, padding=1, groups=in_ch)
        self.point_conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x):
        return self.point_conv(self.depth_conv(x))


class PlainConv(nn.Module):
    """A plain 3x3 conv (the paper's `TC`), for the ablation `--conv_type tc`."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)

    def forward(self, x):
        return self.conv(x)


CONV_TYPES = {"dsc": DepthwiseSeparableConv, "tc": PlainConv}


# The scale factor s has one owner: these two functions define the 1/s copy that the network sees, and
# `EnhanceNet.curve_map_small` is the network on it (no resizing of its own). EnhanceNet.forward,
# enhance.Enhancer (whose separable integer resize is pinned to `shrink` by tests/test_enhance.py) and
# export.WholeEnhancement (whose traced sizes are pinned to `downscaled_size` by tests/test_export.py) all
# compute the network through them; s itself is a setting of each (EnhanceNet(scale_factor), the Enhancer's
# per-call scale_factor, the exported graph's), never a copy of a net whose scale factor was changed.
def downscaled_size(h, w, scale_factor):
    """Size of the 1/s copy the curve map is computed on: exact where s divides the side, never 0."""
    return max(1, round(h / scale_factor)), max(1, round(w / scale_factor))


def shrink(x, size):
    """The 1/s copy of x (B, C, H, W) at `size` (downscaled_size): bilinear, align_corners False. Official:
    F.interpolate(x, scale_factor=1/s, mode='bilinear'); the same sampling where s divides H and W, and
    defined for every other size too."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def enlarge(curve_map, size):
    """A curve map computed on the 1/s copy, resized to `size` (H, W); official: UpsamplingBilinear2d
    (align_corners True)."""
    return F.interpolate(curve_map, size=size, mode="bilinear", align_corners=True)


def apply_curve(x, curve_map, steps=NUM_CURVE_STEPS):
    """The recurrent light-enhancement curve x <- x + r * (x^2 - x), with the same r each step."""
    for _ in range(steps):
        x = x + curve_map * (x * x - x)
    return x


class EnhanceNet(nn.Module):
    """The enhancement-factor extraction net plus the recurrent curve.

    forward(x) with x (B, 3, H, W) in [0, 1] returns (enhanced (B, 3, H, W), curve_map (B, 3, H, W)).
    """

    def __init__(self, scale_factor=1, conv_type="dsc"):
        super().__init__()
        if conv_type not in CONV_TYPES:
            raise ValueError(f"conv_type must be one of {sorted(CONV_TYPES)}, got {conv_type!r}")
        conv = CONV_TYPES[conv_type]
        f = NUM_FEATURES
        self.scale_factor = validate.positive_int(scale_factor, "scale_factor")
        self.conv_type = conv_type
        self.e_conv1 = conv(3, f)
        self.e_conv2 = conv(f, f)
        self.e_conv3 = conv(f, f)
        self.e_conv4 = conv(f, f)
        self.e_conv5 = conv(f * 2, f)
        self.e_conv6 = conv(f * 2, f)
        self.e_conv7 = conv(f * 2, 3)

    def curve_map_lowres(self, x):
        """The curve map at the network's working resolution, i.e. on the 1/s copy of x."""
        if self.scale_factor != 1:
            x = shrink(x, downscaled_size(*x.shape[-2:], self.scale_factor))
        return self.curve_map_small(x)

    def curve_map_small(self, x):
        """The network proper: the curve map of x as it is (x is the 1/s copy already; nothing is resized)."""
        x1 = F.relu(self.e_conv1(x))
        x2 = F.relu(self.e_conv2(x1))
        x3 = F.relu(self.e_conv3(x2))
        x4 = F.relu(self.e_conv4(x3))
        x5 = F.relu(self.e_conv5(torch.cat([x3, x4], 1)))
        x6 = F.relu(self.e_conv6(torch.cat([x2, x5], 1)))
        return torch.tanh(self.e_conv7(torch.cat([x1, x6], 1)))

    @staticmethod
    def upsample_curve_map(curve_map, size):
        """Resize a low-res curve map to `size` (H, W); official: UpsamplingBilinear2d (align_corners=True)."""
        if tuple(curve_map.shape[-2:]) == tuple(size):
            return curve_map
        return enlarge(curve_map, size)

    def curve_map(self, x):
        """The 3-channel curve map r at the full resolution of x."""
        return self.upsample_curve_map(self.curve_map_lowres(x), x.shape[-2:])

    def forward(self, x):
        r = self.curve_map(x)
        return apply_curve(x, r), r


# The paper's class name, so code written against the official repository keeps working.
enhance_net_nopool = EnhanceNet


def _state_dict_from_file(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path} (give the path of a .pth file with --weight_dir)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and format errors all mean "not a checkpoint"
        first_line = (str(e).splitlines() or [""])[0][:200]
        raise UserError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {first_line})") from None
    # Our full training checkpoints hold the network under "model"; bare state_dicts are the exchange format.
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds no state_dict of tensors")
    # Checkpoints saved from DataParallel/DDP or torch.compile carry a prefix on every key.
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def infer_conv_type(state_dict):
    return "tc" if any(".conv.weight" in k for k in state_dict) else "dsc"


def load_enhance_net(weights, scale_factor=1, device="cpu", conv_type=None):
    """Build an EnhanceNet from a weights file (official or ours, or our last.pth); conv_type is read from the keys
    unless given. Raises UserError with a one-line message naming the file."""
    state_dict = _state_dict_from_file(weights)
    # Integer weights load without complaint (load_state_dict converts them) and, rounded to whole
    # numbers, enhance nothing: a network's weights are floating point.
    not_float = [(k, v.dtype) for k, v in state_dict.items() if not (v.is_floating_point() or v.numel() == 0)]
    if not_float:
        key, dtype = not_float[0]
        raise UserError(
            f"{weights} holds integer weights ({key} is {str(dtype).replace('torch.', '')}), not a trained network's "
            "floating-point ones; give another weights file"
        )
    conv_type = conv_type or infer_conv_type(state_dict)
    net = EnhanceNet(scale_factor=scale_factor, conv_type=conv_type)
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise UserError(f"{weights} does not fit the SGZ enhancement net (conv_type={conv_type}): {detail}") from None
    return net.to(device)


# ---------------------------------------------------------------------------------------------
# Segmentation network (frozen; only the semantic loss uses it)
# ---------------------------------------------------------------------------------------------
class FPNHead(nn.Module):
    """The official FPN head: names, shapes, init and resizing as in the paper's modeling/fpn.py."""

    def __init__(self, num_classes):
        super().__init__()
        self.toplayer = nn.Conv2d(2048, 256, kernel_size=1)
        self.smooth1_1 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.smooth2_1 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.smooth3_1 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.smooth4_1 = nn.Conv2d(256, 256, kernel_size=3, padding=1)
        self.smooth1_2 = nn.Conv2d(256, 128, kernel_size=3, padding=1)
        self.smooth2_2 = nn.Conv2d(256, 128, kernel_size=3, padding=1)
        self.smooth3_2 = nn.Conv2d(256, 128, kernel_size=3, padding=1)
        self.smooth4_2 = nn.Conv2d(256, 128, kernel_size=3, padding=1)
        self.latlayer1 = nn.Conv2d(1024, 256, kernel_size=1)
        self.latlayer2 = nn.Conv2d(512, 256, kernel_size=1)
        self.latlayer3 = nn.Conv2d(256, 256, kernel_size=1)
        self.classify = nn.Conv2d(128 * 4, num_classes, kernel_size=3, padding=1)
        for m in self.children():
            nn.init.normal_(m.weight, mean=0.0, std=0.01)
            nn.init.zeros_(m.bias)

    @staticmethod
    def _resize(x, size):
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

    def forward(self, c2, c3, c4, c5):
        p5 = self.toplayer(c5)
        p4 = self._resize(p5, c4.shape[-2:]) + self.latlayer1(c4)
        p3 = self._resize(p4, c3.shape[-2:]) + self.latlayer2(c3)
        p2 = self._resize(p3, c2.shape[-2:]) + self.latlayer3(c2)
        p5 = self.smooth1_2(self.smooth1_1(p5))
        p4 = self.smooth2_2(self.smooth2_1(p4))
        p3 = self.smooth3_2(self.smooth3_1(p3))
        p2 = self.smooth4_2(self.smooth4_1(p2))
        size = p2.shape[-2:]
        features = torch.cat([self._resize(p5, size), self._resize(p4, size), self._resize(p3, size), p2], 1)
        return self.classify(features)  # (B, num_classes, H/4, W/4)


def load_imagenet_resnet50(source="imagenet", download_timeout=20.0):
    """A torchvision ResNet-50 with the backbone weights the official code uses.

    source: 'imagenet' (torchvision's IMAGENET1K_V1 through its weights API and cache, downloaded
    when possible), 'random', or the path of a local ResNet-50 state_dict. Offline with nothing
    cached, 'imagenet' warns once and falls back to random initialisation: never a crash or a hang.
    Returns (model, description).
    """
    import torchvision  # here, not at the top: it costs 1.4 s of start-up that test.py never needs

    model = torchvision.models.resnet50(weights=None)
    if source == "random":
        return model, "random initialisation (--seg_backbone random)"
    if source != "imagenet":
        state_dict = _state_dict_from_file(source)
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as e:
            raise UserError(
                f"{source} is not a torchvision ResNet-50 state_dict: {' '.join(str(e).split())[:200]}"
            ) from None
        return model, f"local file {source}"
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        with socket_timeout(download_timeout):  # a blocked network must fail, not hang
            state_dict = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:
        print(
            f"warning: ImageNet ResNet-50 weights unavailable ({type(e).__name__}); the segmentation backbone is "
            f"randomly initialised. To use them offline, put {os.path.basename(weights.url)} in "
            f"{cached.parent} or pass --seg_backbone PATH.",
            file=sys.stderr,
        )
        return model, "random initialisation (ImageNet weights unavailable offline)"
    model.load_state_dict(state_dict)
    return model, "torchvision ResNet50_Weights.IMAGENET1K_V1"


class SegmentationNet(nn.Module):
    """ResNet-50 (C2..C5) + FPN head -> per-pixel class logits at 1/4 size. Never trained: no parameter
    needs a gradient, and its state never changes, whatever `.train()` or `.eval()` say.

    batch_norm="batch" (the official training objective): BatchNorm normalises with each batch's own
    statistics, as the official code's net does, which it leaves in training mode. The official code
    also updates the running statistics, which nothing ever reads; here they are left as loaded, so the
    net is a fixed function and nothing drifts. batch_norm="frozen": the stored (ImageNet) statistics,
    i.e. eval mode.
    """

    BATCH_NORM_MODES = ("batch", "frozen")

    def __init__(self, num_classes=21, backbone="imagenet", batch_norm="batch"):
        super().__init__()
        if batch_norm not in self.BATCH_NORM_MODES:
            raise ValueError(f"batch_norm must be one of {self.BATCH_NORM_MODES}, got {batch_norm!r}")
        self.batch_norm = batch_norm
        self.resnet, self.backbone_source = load_imagenet_resnet50(backbone)
        self.resnet.fc = nn.Identity()  # unused; keeps 2M parameters out of the module
        self.fpn = FPNHead(num_classes)
        self.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                # In training mode and without tracking, BatchNorm uses batch statistics and updates nothing.
                m.track_running_stats = batch_norm == "frozen"
        self.train()

    def train(self, mode=True):
        return super().train(self.batch_norm == "batch")

    def forward(self, x):
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        c2 = r.layer1(x)
        c3 = r.layer2(c2)
        c4 = r.layer3(c3)
        c5 = r.layer4(c4)
        return self.fpn(c2, c3, c4, c5)
