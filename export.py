"""Export the whole enhancement as one ONNX graph, for runtimes without PyTorch (ONNX Runtime, OpenCV's DNN
module, and the mobile and GPU runtimes that convert from ONNX).

    python export.py --weight_dir weight/sgz.pth --output sgz.onnx                   # any N, H, W
    python export.py --output sgz_720p.onnx --fixed_size 720x1280                     # every shape constant
    python export.py --weight_dir weight/Epoch99.pth --output official.onnx --fp16    # float16 network

The graph takes `image`, float32 (N, 3, H, W) RGB in [0, 1], and returns `enhanced`, the same shape: the
bilinear 1/s copy (align_corners False) at exactly model.downscaled_size(H, W, s), the network, its map
resized back (align_corners True), and the 8 curve steps written with multiplies and adds only. It computes
what model.EnhanceNet(scale_factor=s) computes, at every size (the script checks it with ONNX Runtime).
"""

import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
import torch.nn as nn

import model
import runtime
from option import get_export_parser
from runtime import UserError, run_script

INPUT_NAME, OUTPUT_NAME = "image", "enhanced"
# A size that is a multiple of no usual scale factor and where H / 12 = 22.5 is a rounding tie.
CHECK_SIZE = (270, 333)


def downscaled_side(n, scale_factor):
    """max(1, round(n / s)) as model.downscaled_size computes it (round half to even, as Python's round), in
    integer ops that work alike on an int and on a traced shape, so the ONNX graph computes it for every size."""
    q, r = n // scale_factor, n % scale_factor
    q = q + ((2 * r > scale_factor) | ((2 * r == scale_factor) & (q % 2 == 1)))
    return q + (q == 0)


class WholeEnhancement(nn.Module):
    """net's forward (a model.EnhanceNet at its scale factor) as one traceable function of the image: the
    enhanced image only, the resizes to sizes computed from the input's shape (or from fixed_size, giving a
    graph of constant shapes), and the network in network_dtype (the resizes and the curve stay float32).
    It is model.EnhanceNet.forward with the sizes computed in traceable integer ops: the same model.shrink,
    curve_map_small, model.enlarge and model.apply_curve."""

    def __init__(self, net, fixed_size=None, network_dtype=torch.float32):
        super().__init__()
        self.scale_factor, self.fixed_size, self.network_dtype = net.scale_factor, fixed_size, network_dtype
        self.net = copy.deepcopy(net).to(network_dtype)  # a copy: the caller's net keeps its dtype

    def forward(self, image):
        h, w = self.fixed_size or image.shape[-2:]
        s = self.scale_factor
        x = image if s == 1 else model.shrink(image, (downscaled_side(h, s), downscaled_side(w, s)))
        curve_map = self.net.curve_map_small(x.to(self.network_dtype)).float()
        if s != 1:  # as model.EnhanceNet.upsample_curve_map, which compares sizes in Python and cannot be traced
            curve_map = model.enlarge(curve_map, (h, w))
        return model.apply_curve(image, curve_map)


def export_onnx(net, path, opset=17, fp16=False, fixed_size=None):
    """Write the whole enhancement by net (a model.EnhanceNet, at its scale factor) to path, atomically,
    checked by the ONNX checker."""
    whole = WholeEnhancement(net, fixed_size, torch.float16 if fp16 else torch.float32).eval()
    example = torch.zeros(1, 3, *(fixed_size or CHECK_SIZE))
    dynamic_axes = (
        None if fixed_size else {name: {0: "batch", 2: "height", 3: "width"} for name in (INPUT_NAME, OUTPUT_NAME)}
    )
    with runtime.atomic_output(path) as tmp:
        # The TorchScript exporter (deprecated since torch 2.9, hence the filter) records the integer size
        # arithmetic as plain ONNX ops and each resize as one Resize to a computed size: a small graph
        # that ONNX Runtime and OpenCV run at any size.
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                whole,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
            )
        graph = onnx.load(str(tmp))
        graph.doc_string = (
            "SGZ low-light enhancement: image float32 (N, 3, H, W) RGB in [0, 1] -> enhanced, the same shape"
        )
        graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3  # the exporter leaves the channels unknown
        onnx.helper.set_model_props(
            graph, {"scale_factor": str(net.scale_factor), "network_dtype": "float16" if fp16 else "float32"}
        )
        onnx.checker.check_model(graph, full_check=True)
        onnx.save(graph, str(tmp))


def onnx_session(path, threads=0):
    """An ONNX Runtime CPU session for an exported file (threads 0: ONNX Runtime's default, one per core)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def enhance_array_onnx(session, image):
    """Enhancer.enhance_array for an exported graph: an RGB uint8 or uint16 array HxWx3 in, the enhanced
    array of the same type out, rounded as test.py rounds (half up)."""
    full_scale = np.iinfo(image.dtype).max
    x = np.divide(image.transpose(2, 0, 1)[None], full_scale, dtype=np.float32)
    y = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0][0]
    y *= full_scale
    y += 0.5
    return np.clip(y, 0, full_scale).transpose(1, 2, 0).astype(image.dtype)


@torch.inference_mode()
def largest_difference(path, net, size=CHECK_SIZE, seed=0):
    """max |ONNX Runtime - PyTorch| of the exported file against net (an EnhanceNet at the export's scale
    factor) on a random image of the given size."""
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed))
    got = onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    return float(np.abs(got - net(x)[0].numpy()).max())


def main(args):
    output = Path(args.output)
    if output.is_dir():
        raise UserError(
            f"--output {output} is a folder; give the path of the .onnx file to write, e.g. {output / 'sgz.onnx'}"
        )
    runtime.check_output_path(output)  # a device, FIFO or socket: refused before the network loads
    net = model.load_enhance_net(args.weight_dir, scale_factor=args.scale_factor).eval()
    export_onnx(net, output, args.opset, args.fp16, args.fixed_size)
    size = args.fixed_size or CHECK_SIZE
    shape = f"({'N, 3, H, W' if args.fixed_size is None else f'1, 3, {size[0]}, {size[1]}'})"
    print(
        f"wrote {output}: {INPUT_NAME} {shape} -> {OUTPUT_NAME}, scale factor {args.scale_factor}, "
        f"opset {args.opset}, {'float16' if args.fp16 else 'float32'} network; ONNX checker passed"
    )
    print(
        f"largest |ONNX Runtime - PyTorch| on a random {size[0]}x{size[1]} image: "
        f"{largest_difference(output, net, size):.2g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main, get_export_parser()))
