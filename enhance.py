"""Whole-photo enhancement: an image array in, the enhanced array out, exactly what `model.EnhanceNet`
computes on it, fast and in little memory. test.py, the video script, the web demo, the benchmarks and
the ONNX export all enhance through `Enhancer`.

    enhancer = Enhancer("weight/sgz.pth", device="auto")    # precision="fp32" | "bf16" | "fp16"
    bright = enhancer.enhance_array(dark)                   # HxW, HxWx3 or HxWx4, uint8 or uint16 -> the same
    gentle = enhancer.enhance_array(dark, scale_factor=4, strength=0.5)
    frames = enhancer.enhance_frames(batch)                 # (B, H, W, 3) uint8 tensor on the device -> the same

How: the network only ever sees the 1/s copy of a photo, built from the few rows and columns that
bilinear resizing reads (in the image's own integer type); its curve map is resized back and the 8-step
curve applied a band of rows at a time, in place, straight into an output array of the input's type,
so a 100-megapixel photo needs no full-resolution float copy. Results equal the straightforward fp32
computation to 1/255 (rounding ties aside). `enhance_frames` is the batched path for video frames, which fit
in memory whole: one op per step over the batch (optionally compiled), the same result to 1/255.
"""

import contextlib
import math
import sys
import threading

import numpy as np
import torch

import curve_kernel
import model
import validate
from curve_kernel import curve_rows_kernel
from runtime import UserError

NOT_FINITE = (
    "the network's output is not finite (NaN or infinity): the weights or --precision "
    "do not suit this image; try --precision fp32 or other weights"
)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as OpenCV and Pillow turn RGB into grey
# Elements of one band of rows: on a CPU the band's four float buffers (1 MB) stay in L2 cache, where
# the 20 ops per element run 6-8x faster than over whole images; on a GPU bands only bound the memory
# (128 MB of buffers for each image in flight).
BAND_ELEMENTS = {"cpu": 1 << 16, "other": 1 << 23}
# The network's activations take about 1.5 KB a pixel of the copy it runs on (32-64 float channels, several
# layers alive at once): 16 GB for a 12-megapixel photo at --scale_factor 1. Copies above TILE_PIXELS run in
# overlapping tiles of about this many pixels (~0.4 GB of activations each), which give the same map.
TILE_PIXELS = 1 << 18
# Each output pixel of the net depends on the input within this distance: 7 layers of 3x3 convolutions
# along its longest path (e_conv1-4, 5, 6, 7; the 1x1 pointwise convs and the skip concatenations add none).
RECEPTIVE_RADIUS = 7


def source_indices(in_size, out_size, align_corners, device="cpu"):
    """For each output position along one axis: the two source positions and the weight of the second,
    as F.interpolate(mode="bilinear") computes them (no antialias), so that a resize can be done in pieces."""
    dst = torch.arange(out_size, dtype=torch.float32, device=device)
    if align_corners:
        src = dst * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    else:
        src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp_(min=0)
    i0 = src.long().clamp_(max=in_size - 1)
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    return i0, i1, (src - i0).clamp_(0, 1)


def resize_axis(x, dim, size, align_corners):
    """Bilinear resize of one axis of x to `size` (float result; integer inputs are converted after the
    gather, so a 1/12 copy converts 1/6 of the rows)."""
    if size == x.shape[dim]:  # the identity (weights 0): no gathered copies of a full-size image
        return x.float()
    i0, i1, weight = source_indices(x.shape[dim], size, align_corners, x.device)
    shape = [1] * x.dim()
    shape[dim] = size
    return torch.lerp(x.index_select(dim, i0).float(), x.index_select(dim, i1).float(), weight.view(shape))


def row_upsampler(low_rows, height):
    """Bands of rows of the align_corners=True bilinear resize of low_rows (h, N) to `height` rows, as
    F.interpolate computes them. Returns fill(top, bottom, out), which writes rows top..bottom-1 into out
    (bottom - top, N) with one small matmul over the few low-res rows that the band lies between."""
    h = low_rows.shape[0]
    i0, i1, weight = source_indices(h, height, align_corners=True, device=low_rows.device)
    matrix = torch.zeros(height, h, device=low_rows.device)  # 2 non-zeros a row
    rows = torch.arange(height, device=low_rows.device)
    matrix.index_put_((rows, i0), 1 - weight, accumulate=True)
    matrix.index_put_((rows, i1), weight, accumulate=True)
    first, last = i0.tolist(), i1.tolist()

    def fill(top, bottom, out):
        lo, hi = first[top], last[bottom - 1] + 1
        return torch.mm(matrix[top:bottom, lo:hi], low_rows[lo:hi], out=out)

    return fill


def apply_curve_(x, curve_map, scratch, scale):
    """scale * model.apply_curve(x, curve_map) + 0.5, ready to be truncated to integers, computed in x.
    Two ops a step (x + r(x^2 - x) = x((1 - r) + r x)) and no allocation: `scratch` holds two more
    tensors like x. For r in [-1, 1] the curve maps [0, 1] into [0, 1], so no clamp is needed."""
    one_minus_r, factor = scratch
    torch.sub(1, curve_map, out=one_minus_r)
    for _ in range(model.NUM_CURVE_STEPS - 1):
        x.mul_(torch.addcmul(one_minus_r, curve_map, x, out=factor))
    torch.addcmul(one_minus_r, curve_map, x, out=factor)
    return torch.addcmul(x.new_full((), 0.5), x, factor, value=scale, out=x)


def apply_curve_cpu(rgb, curve_rows, out_rgb, full_scale, band_elements):
    """The curve on a CPU with the curve_rows kernel: rgb (H, W, 1 or 3) integers, curve_rows (h, W, 3) float32,
    into out_rgb (H, W, 3), or (H, W) for grey. Contiguous RGB (what the decoders give) runs in place in one
    call; RGBA views and grey go through bands of rows copied to contiguous RGB (grey: each y kept as a float
    and combined with the BT.601 weights before truncation, as the PyTorch path)."""
    height, width = rgb.shape[:2]
    first, second, weight = (t.numpy() for t in source_indices(curve_rows.shape[0], height, align_corners=True))
    low = curve_rows.reshape(curve_rows.shape[0], width * 3)
    if rgb.shape[2] == 3 and rgb.flags.c_contiguous and out_rgb.flags.c_contiguous:
        curve_rows_kernel()(
            rgb.reshape(height, -1), low, first, second, weight, full_scale, out_rgb.reshape(height, -1)
        )
        return
    grey = out_rgb.ndim == 2
    band = max(1, min(height, band_elements // (width * 3)))
    y = np.empty((band, width * 3), np.float32 if grey else out_rgb.dtype)
    for top in range(0, height, band):
        bottom = min(top + band, height)
        src = np.ascontiguousarray(np.broadcast_to(rgb[top:bottom], (bottom - top, width, 3)))
        rows = slice(top, bottom)
        curve_rows_kernel()(
            src.reshape(bottom - top, -1), low, first[rows], second[rows], weight[rows], full_scale, y[: bottom - top]
        )
        band_y = y[: bottom - top].reshape(bottom - top, width, 3)
        if grey:
            out_rgb[rows] = band_y @ np.array(LUMA, np.float32)  # truncated, as y itself would be
        else:
            out_rgb[rows] = band_y


def shrink_frames(frames, size):
    """(B, H, W, 3) uint8 -> the (B, 3, h, w) float copy in [0, 1] that the network sees (model.shrink)."""
    return model.shrink(frames.permute(0, 3, 1, 2).float(), size).div_(255)


def finish_frames(frames, curve_map):
    """The curve map enlarged to the frames, the curve applied, rounded half up to uint8 (B, H, W, 3)."""
    x = frames.permute(0, 3, 1, 2).float().div(255)
    y = model.apply_curve(x, model.enlarge(curve_map, frames.shape[1:3]))
    return (y * 255 + 0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


_compiled_frame_steps = {}
_compile_lock = threading.Lock()


def frame_steps(compiled):
    """(shrink_frames, finish_frames), or both compiled by torch.compile once for the process (each frame
    size and batch size compiles once): the full-resolution steps become a few fused kernels each."""
    if not compiled:
        return shrink_frames, finish_frames
    with _compile_lock:
        if not _compiled_frame_steps:
            _compiled_frame_steps["steps"] = tuple(
                torch.compile(f, dynamic=False) for f in (shrink_frames, finish_frames)
            )
        return _compiled_frame_steps["steps"]


NEGLIGIBLE_WEIGHT = 1e-20


@torch.no_grad()
def zero_negligible_weights_(net):
    """Set the weights below 1e-20 in magnitude to 0. Weight decay drives most of a trained net's unused
    weights towards 0 (7,254 of the 10,561 in weight/sgz.pth lie below 1e-12); their products with the
    activations are subnormal floats, which CPUs compute 10-20x slower (the network pass over a 4K photo's
    1/12 copy: 1.0 s against 0.06 s). Such weights contribute less than 1e-17 of any output: the results
    are unchanged (tested bit for bit)."""
    for weight in net.parameters():
        weight.masked_fill_(weight.abs() < NEGLIGIBLE_WEIGHT, 0)


class OneDNNConv2d(torch.nn.Conv2d):
    """A Conv2d that on a CPU, in float32, always runs oneDNN's convolution. PyTorch gives a 1x1 convolution of
    one image to its own THNN kernel when it may use only one thread (as the scripts allow it: one image per
    core), a choice made for NCHW tensors; on the channels-last tensors Enhancer runs, THNN first transposes
    its input and is 2-3x slower than oneDNN, which PyTorch itself picks when it may use more threads. The
    same convolution (equal to float rounding): the network 1.5x faster on a 1080p photo's 1/12 copy."""

    def forward(self, x):
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32:
            return super().forward(x)  # other devices, autocast, other precisions: PyTorch's own choice
        return torch.mkldnn_convolution(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups
        )


def pointwise_convs_on_onednn_(net):
    """Run net's 1x1 convolutions through OneDNNConv2d (where PyTorch has oneDNN; the weights are unchanged)."""
    if not torch.backends.mkldnn.is_available():
        return
    for module in net.modules():
        if type(module) is torch.nn.Conv2d and module.kernel_size == (1, 1) and module.padding_mode == "zeros":
            module.__class__ = OneDNNConv2d


def tiles(size, core):
    """(start, stop) of the tiles along one axis: `core` positions each, the last one shorter."""
    return [(start, min(start + core, size)) for start in range(0, size, core)]


def curve_map_tiled(net, x, tile_pixels=None):
    """net.curve_map_small(x) for x (1, 3, h, w), the 1/s copy, in overlapping tiles when x has more than `tile_pixels`
    pixels (default TILE_PIXELS), so the memory stays that of one tile however large x is. Exact: each tile
    is run with RECEPTIVE_RADIUS pixels of real context on every side that is not the image's border (where
    the network's own zero padding applies, as in one whole run), and only its centre is kept, which no
    padding of the tile reaches. Equal to the whole run up to float summation order (convolution kernels
    may sum in another order for another size)."""
    tile_pixels = TILE_PIXELS if tile_pixels is None else tile_pixels
    h, w = x.shape[-2:]
    if h * w <= tile_pixels:
        return net.curve_map_small(x)
    halo = RECEPTIVE_RADIUS
    core = max(halo, math.isqrt(tile_pixels) - 2 * halo)
    out = None
    for top, bottom in tiles(h, core):
        for left, right in tiles(w, core):
            t0, l0 = max(0, top - halo), max(0, left - halo)
            tile = x[..., t0 : min(h, bottom + halo), l0 : min(w, right + halo)]
            result = net.curve_map_small(tile.contiguous(memory_format=torch.channels_last))
            if out is None:
                out = result.new_empty(1, result.shape[1], h, w)
            out[..., top:bottom, left:right] = result[..., top - t0 : bottom - t0, left - l0 : right - l0]
    return out


def check_image_array(image):
    if not (
        isinstance(image, np.ndarray)
        and image.dtype in (np.uint8, np.uint16)
        and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)))
    ):
        raise ValueError(
            f"expected a uint8 or uint16 array HxW, HxWx3 or HxWx4; got "
            f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
        )


class Enhancer:
    """The trained enhancement net applied to whole photos (numpy arrays), at any scale factor and strength.
    Loads the weights once; one instance serves every scale factor and thread."""

    def __init__(
        self,
        weights="weight/sgz.pth",
        scale_factor=12,
        device="auto",
        precision="fp32",
        conv_type=None,
        weights_argument="weights=",
    ):
        """weights_argument: how error messages name the weights (command lines pass their flag)."""
        validate.one_of(precision, list(PRECISIONS), "precision")
        scale_factor = validate.positive_int(scale_factor, "scale_factor")
        self.device = (
            model.get_device(validate.device(device, "device")) if isinstance(device, str) else torch.device(device)
        )
        if precision == "fp16" and self.device.type == "cpu":
            raise UserError("precision fp16 needs a GPU; on a CPU use fp32 (bf16 helps only with AVX512-BF16 or AMX)")
        self.scale_factor, self.precision = scale_factor, precision
        # The net runs (curve_map_small) on the 1/s copy this class makes itself (from a few rows, in the
        # image's own dtype); channels-last is 1.5x faster on CPU and is the layout an HxWx3 array already has.
        self.net = model.load_enhance_net(
            weights, device=self.device, conv_type=conv_type, argument_name=weights_argument
        )
        self.net.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        if not all(torch.isfinite(p).all() for p in self.net.parameters()):
            raise UserError(
                f"{weights} holds NaN or infinite weights (a diverged training run?); "
                f"give other weights with {weights_argument}"
            )
        zero_negligible_weights_(self.net)
        pointwise_convs_on_onednn_(self.net)
        dtype = PRECISIONS[precision]
        if dtype is not None and (
            note := model.low_precision_note(
                self.device, dtype, f"precision {precision}", "typically 2.5-3.5x slower than fp32"
            )
        ):
            print(note, file=sys.stderr)
        self.band_elements = BAND_ELEMENTS["cpu" if self.device.type == "cpu" else "other"]
        if self.device.type == "cpu":
            curve_kernel.warm_up_curve_kernel()  # before any image, not in the middle of the first one

    def autocast(self):
        if PRECISIONS[self.precision] is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def curve_map_rows(self, rgb, full_scale, scale_factor, strength, map_filter, bgr=False):
        """The curve map of the integer image rgb (H, W, C) / full_scale computed on its 1/s copy and
        resized to the full width: (h, W, 3). Rows of the full-size map are then interpolated band by band.
        bgr: the channels are blue, green, red, and so are the map's (the net sees its copy in RGB)."""
        height, width = rgb.shape[:2]
        h, w = model.downscaled_size(height, width, scale_factor)
        small = resize_axis(resize_axis(rgb, 0, h, align_corners=False), 1, w, align_corners=False).div_(full_scale)
        if bgr:
            small = small.flip(-1)
        x = small.expand(h, w, 3).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
        with self.autocast():
            curve_map = curve_map_tiled(self.net, x).float()  # (1, 3, h, w)
        if not torch.isfinite(curve_map).all():  # the network's only output, checked where it is small
            raise UserError(NOT_FINITE)
        if strength != 1:
            curve_map = curve_map * strength
        if map_filter is not None:
            curve_map = map_filter(curve_map)
        curve_map = curve_map.clamp(-1, 1)  # keeps the curve inside [0, 1] (tanh already is; filters may not be)
        curve_map = curve_map[0].permute(1, 2, 0)  # (h, w, 3)
        if bgr:
            curve_map = curve_map.flip(-1)
        # Only the width changes (rows map to themselves), as model.enlarge does it: 3x faster than F.interpolate.
        return resize_axis(curve_map, 1, width, align_corners=True).contiguous()  # (h, W, 3)

    @torch.inference_mode()
    def enhance_array(self, image, scale_factor=None, strength=1.0, map_filter=None, order="RGB"):
        """image: numpy HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA), dtype uint8 or uint16.
        Returns a new array of the same shape and dtype (alpha passed through unchanged).
        order: "BGR" for HxWx3 (BGR) or HxWx4 (BGRA) arrays, OpenCV's layout, enhanced as they are (the
        curve works on each channel alone; only the network's small copy is turned into RGB): the result
        is exactly the RGB result with its channels reversed.
        scale_factor: the curve map is computed on a 1/s copy (None: the one given at construction).
        strength: multiplies the curve map (clamped to [-1, 1]); 1.0 is the paper's model exactly,
        <1 gives a gentler, >1 a stronger enhancement.
        map_filter: optional callable applied to the low-resolution curve map, a float tensor
        (1, 3, h, w), before it is resized to full resolution (e.g. temporal smoothing of video frames)."""
        check_image_array(image)
        scale_factor = (
            self.scale_factor if scale_factor is None else validate.positive_int(scale_factor, "scale_factor")
        )
        strength = validate.non_negative_float(strength, "strength")
        if order not in ("RGB", "BGR"):
            raise ValueError(f"order must be 'RGB' or 'BGR', got {order!r}")
        full_scale = float(np.iinfo(image.dtype).max)
        out = np.empty_like(image)
        if image.ndim == 3 and image.shape[2] == 4:
            out[..., 3] = image[..., 3]
        grey = image.ndim == 2
        rgb = image[..., None] if grey else image[..., :3]  # (H, W, 1 or 3), still integers
        out_rgb = out if grey else out[..., :3]
        pixels = torch.from_numpy(np.ascontiguousarray(rgb) if self.device.type == "cpu" else rgb)
        if pixels.dtype == torch.uint16 and self.device.type != "cpu":
            pixels = pixels.int()  # uint16 has few kernels off the CPU
        curve_rows = self.curve_map_rows(
            pixels.to(self.device),
            full_scale,
            scale_factor,
            strength,
            map_filter,
            bgr=order == "BGR" and not grey,
        )  # (h, W, 3)
        if self.device.type == "cpu":
            apply_curve_cpu(rgb, curve_rows.numpy(), out_rgb, full_scale, self.band_elements)
        else:
            self.apply_curve_bands(pixels.to(self.device), curve_rows, out_rgb, full_scale)
        return out

    @torch.inference_mode()
    def enhance_frames(self, frames, scale_factor=None, strength=1.0, map_filter=None, compiled=False, check=True):
        """The batched path, for video frames: frames (B, H, W, 3) uint8 RGB on this Enhancer's device ->
        the enhanced frames, the same, as enhance_array computes them (within 1/255). Each step is one
        whole-batch op (frames fit in memory whole, unlike photos, which enhance_array takes in bands);
        compiled=True compiles the full-resolution steps with torch.compile (for GPUs). check=False leaves
        out the check that the curve map is finite, which waits for the device (a CUDA graph cannot hold it).
        scale_factor, strength and map_filter as for enhance_array."""
        if not (frames.dim() == 4 and frames.shape[3] == 3 and frames.dtype == torch.uint8):
            raise ValueError(f"expected uint8 frames (B, H, W, 3); got {frames.dtype} {tuple(frames.shape)}")
        shrink, finish = frame_steps(compiled)
        size = model.downscaled_size(frames.shape[1], frames.shape[2], scale_factor or self.scale_factor)
        small = shrink(frames, size).contiguous(memory_format=torch.channels_last)
        dtype = PRECISIONS[self.precision]
        # no autocast cache: a CUDA graph must not capture cached casts of the weights
        autocast = (
            torch.autocast(self.device.type, dtype=dtype, cache_enabled=False) if dtype else contextlib.nullcontext()
        )
        with autocast:
            curve_map = self.net.curve_map_small(small).float()
        if check and not torch.isfinite(curve_map).all():
            raise UserError(NOT_FINITE)
        if strength != 1:
            curve_map = curve_map * strength
        if map_filter is not None:
            curve_map = map_filter(curve_map)
        return finish(frames, curve_map.clamp(-1, 1))

    def enhance_frame(self, rgb, map_filter=None, strength=1.0):
        """One video frame, a numpy (H, W, 3) array: through enhance_frames on a GPU (whole-frame ops, no
        bands), through enhance_array on a CPU (its kernel is faster there) and for 16-bit frames."""
        if self.device.type == "cpu" or rgb.dtype != np.uint8:
            return self.enhance_array(rgb, strength=strength, map_filter=map_filter)
        frames = torch.from_numpy(np.ascontiguousarray(rgb))[None].to(self.device)
        return self.enhance_frames(frames, strength=strength, map_filter=map_filter)[0].cpu().numpy()

    def apply_curve_bands(self, rgb, curve_rows, out_rgb, full_scale):
        """The curve on a GPU (or MPS), a band of rows at a time with PyTorch ops, into the numpy out_rgb."""
        height, width = rgb.shape[:2]
        fill_curve_map = row_upsampler(curve_rows.view(-1, width * 3), height)
        luma = torch.tensor(LUMA, device=self.device)
        band = max(1, min(height, self.band_elements // (width * 3)))
        buffers = torch.empty(4, band, width, 3, device=self.device)
        out_rgb = torch.from_numpy(out_rgb)
        for top in range(0, height, band):
            bottom = min(top + band, height)
            x, curve_map, *scratch = (b[: bottom - top] for b in buffers)  # (rows, W, 3) each
            fill_curve_map(top, bottom, out=curve_map.view(-1, width * 3))
            torch.div(rgb[top:bottom].expand(-1, -1, 3), full_scale, out=x)
            y = apply_curve_(x, curve_map, scratch, full_scale)
            # Truncating y rounds half up, as save_image does. The band comes back as floats and is
            # converted here: PyTorch has few uint16 kernels off the CPU.
            out_rgb[top:bottom].copy_((y @ luma if out_rgb.dim() == 2 else y).cpu())
