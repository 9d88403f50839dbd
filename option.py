"""The command line of every script: its parser and the validators of its values. Nothing is parsed at
import: scripts call `runtime.run_script(main, get_*_parser())` under `if __name__ == "__main__"`; tests
pass their own argv. The official flag names and defaults are kept (so commands from the paper's README
work), with booleans that mean what they say and paths that need no trailing slash.
"""

import argparse

import validate


class Parser(argparse.ArgumentParser):
    """argparse with one line for a bad command line: `prog: error: what (see --help)`, exit 2. argparse's own
    error prints the whole usage first, which for these scripts runs to a dozen lines before the one that
    matters."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def checked(validator, **bounds):
    """An argparse `type=` over a validator of validate.py: the same check and wording as the Python APIs,
    reported by argparse as `argument --flag: expected ..., got '...'`."""

    def convert(text):
        try:
            return validator(text, **bounds)
        except validate.InvalidValue as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = validator.__name__
    return convert


positive_int = checked(validate.positive_int)
non_negative_int = checked(validate.non_negative_int)
positive_finite = checked(validate.positive_float)
non_negative_finite = checked(validate.non_negative_float)
unit_interval = checked(validate.unit_interval)
quality = checked(validate.quality)
port = checked(validate.port)
seed = checked(validate.seed)
device = checked(validate.device)
path = checked(validate.path_text)
host = checked(validate.host)
host_list = checked(validate.host_list)
label = checked(validate.label)
image_side = checked(validate.integer, low=16, high=16384)  # 16: the exposure loss pools 16x16 patches
crf = checked(validate.integer, low=0, high=51)
temporal_smoothing = checked(validate.real, low=0, high=1, high_open=True)


def optional_path(text):
    """A path, or '' for the default."""
    return text if text == "" else path(text)


def str2bool(value):
    """'True/False/yes/no/1/0' -> bool, so the official `--load_pretrain False` means False."""
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("true", "t", "yes", "y", "1", "on"):
        return True
    if v in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def add_bool(parser, name, default, help):
    """`--flag`, `--flag true|false` and `--no-flag` all work."""
    parser.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)
    parser.add_argument(f"--no-{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


def add_model_args(parser, scale_factor):
    g = parser.add_argument_group("network")
    g.add_argument(
        "--scale_factor",
        type=positive_int,
        default=scale_factor,
        help=f"compute the curve map on a 1/s copy of the image and resize it back (default {scale_factor}; "
        "the paper trains at 1 and tests at 12)",
    )
    g.add_argument(
        "--conv_type",
        default="dsc",
        choices=["dsc", "tc"],
        help="dsc: depthwise-separable convs (the paper); tc: plain 3x3 convs (ablation). "
        "When loading weights the type is read from the file.",
    )
    g.add_argument(
        "--device", type=device, default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps"
    )
    return g


class TrainParser(Parser):
    """The training parser also records which flags the command line gave (`args.given`, a set of names),
    so `--resume` can tell a saved setting the user overrides from a default nobody asked for."""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        # argparse fills in a default only where the namespace lacks the attribute: parse again into
        # a namespace that has every attribute, and what changed is what the command line gave.
        untouched = object()
        again = super().parse_args(args, argparse.Namespace(**dict.fromkeys(vars(parsed), untouched)))
        parsed.given = {name for name, value in vars(again).items() if value is not untouched}
        return parsed


def workers(value):
    """'auto' or a number of worker processes (0: load in the main process)."""
    if value == "auto":
        return value
    try:
        return validate.integer(value, low=0)
    except validate.InvalidValue:
        raise argparse.ArgumentTypeError(f"expected auto or 0 or a positive integer, got {value!r}") from None


def get_train_parser():
    p = TrainParser(
        description="Train SGZ (zero-reference, semantic-guided) on a folder of low-light images. "
        "`--resume RUN/last.pth` alone continues a run with the settings it was started with.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--lowlight_images_path",
        type=path,
        default="data/train_data",
        help="folder of training images, searched recursively (jpg, png, bmp, tif, webp)",
    )
    g.add_argument(
        "--image_size",
        type=image_side,
        default=512,
        help="training images are resized to this square size (Lanczos), 16 to 16384",
    )
    g.add_argument(
        "--num_workers",
        type=workers,
        default="auto",
        help="data-loading worker processes; auto = CPU cores - 1, at most 4 (more than the cores are lowered)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=positive_finite, default=1e-4, help="Adam learning rate")
    g.add_argument("--weight_decay", type=non_negative_finite, default=1e-4, help="Adam weight decay")
    g.add_argument(
        "--grad_clip_norm", type=positive_finite, default=0.1, help="clip the gradient's global norm to this"
    )
    g.add_argument(
        "--num_epochs", type=positive_int, default=100, help="epochs to train (in total, counting resumed ones)"
    )
    g.add_argument(
        "--train_batch_size", type=positive_int, default=6, help="images per step (per process under torchrun)"
    )
    g.add_argument("--seed", type=seed, default=1143, help="seed for shuffling and initialisation")
    g.add_argument(
        "--max_steps",
        type=non_negative_int,
        default=0,
        help="stop (with a checkpoint) after this many steps in total; 0 = no limit",
    )
    add_bool(g, "amp", False, "mixed precision: bfloat16 autocast on CPU, fp16 (with loss scaling) or bf16 on CUDA")
    g = p.add_argument_group("loss (the paper's weights by default)")
    g.add_argument(
        "--tv_weight", type=non_negative_finite, default=1600.0, help="illumination smoothness (TV of the curve map)"
    )
    g.add_argument("--spa_weight", type=non_negative_finite, default=1.0, help="8-neighbour spatial consistency")
    g.add_argument("--color_weight", type=non_negative_finite, default=5.0, help="colour constancy")
    g.add_argument("--exp_weight", type=non_negative_finite, default=10.0, help="exposure control")
    g.add_argument(
        "--seg_weight",
        type=non_negative_finite,
        default=0.1,
        help="semantic (focal) loss; 0 skips the segmentation net",
    )
    g.add_argument(
        "--patch_size",
        type=checked(validate.integer),
        default=4,
        choices=[3, 4, 5],
        help="pooling patch of the spatial consistency loss",
    )
    g.add_argument("--exp_level", type=unit_interval, default=0.6, help="well-exposedness level E of the exposure loss")
    g.add_argument(
        "--num_of_SegClass", type=positive_int, default=21, help="classes of the segmentation head (VOC = 21)"
    )
    g.add_argument(
        "--seg_backbone",
        type=path,
        default="imagenet",
        help="segmentation backbone weights: imagenet (torchvision's, from its cache or downloaded), "
        "random, or the path of a local ResNet-50 state_dict",
    )
    g.add_argument(
        "--seg_bn",
        default="batch",
        choices=["batch", "frozen"],
        help="BatchNorm of the (never trained) segmentation net: batch = normalise with each batch's statistics, "
        "as the official code does (its net stays in training mode; the published checkpoint was trained "
        "so); frozen = the backbone's stored ImageNet statistics (eval mode)",
    )
    g = p.add_argument_group("run folder, checkpoints and logging")
    g.add_argument(
        "--snapshots_folder",
        type=optional_path,
        default="",
        help="the run's folder: EpochN.pth, last.pth, args.json, train.log, loss_log.csv, loss_plot.png "
        "(default: runs/DATE-TIME, or the folder of the --resume file)",
    )
    add_bool(
        g,
        "overwrite",
        False,
        "start a new run in a --snapshots_folder that holds one, deleting its checkpoints and log",
    )
    add_bool(g, "load_pretrain", False, "start from the weights in --pretrain_dir")
    g.add_argument(
        "--pretrain_dir", type=path, default="weight/Epoch99.pth", help="weights to start from with --load_pretrain"
    )
    g.add_argument(
        "--resume",
        type=optional_path,
        default="",
        help="continue a run from its last.pth, with its saved settings (flags given "
        "with it override them where a run can change them)",
    )
    g.add_argument(
        "--display_iter", type=positive_int, default=10, help="log the losses every N steps (and at each epoch's end)"
    )
    g.add_argument(
        "--snapshot_iter",
        type=positive_int,
        default=10,
        help="write the checkpoints every N steps (and at each epoch's end)",
    )
    add_model_args(p, scale_factor=1)
    return p


def add_inference_args(
    parser,
    precision_help="fp32 is exact; bf16 (autocast) pays off on GPUs and CPUs with AVX512-BF16 or AMX; fp16: CUDA only",
):
    """Flags every script that enhances with trained weights shares: weights, precision and the network's."""
    parser.add_argument(
        "--weight_dir", type=path, default="weight/sgz.pth", help="weights file (ours or the official Epoch99.pth)"
    )
    g = add_model_args(parser, scale_factor=12)
    g.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help=precision_help)
    return g


def get_test_parser():
    p = Parser(description="Enhance low-light images with SGZ.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument(
        "--input_dir", type=path, default="data/test_data", help="an image, or a folder searched recursively"
    )
    p.add_argument(
        "--test_dir", type=path, default="test_output", help="output folder; the input tree is mirrored under it"
    )
    add_inference_args(
        p,
        precision_help="fp32: exact. bf16: the network under bfloat16 autocast (the curve stays fp32; "
        "results within 2/255), which pays off on GPUs and on CPUs with AVX512-BF16 or AMX (recent Xeon/EPYC) "
        "and is slower on other CPUs. fp16: CUDA only",
    )
    p.add_argument(
        "--max_mpix",
        type=positive_finite,
        default=200,
        help="refuse images above this many megapixels (read from the header: decompression bombs)",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=0,
        help="images in flight at once (threads that read, enhance and write); 0 = one per CPU core",
    )
    g = p.add_argument_group("output files")
    g.add_argument(
        "--output_format",
        default="same",
        choices=["same", "jpg", "png", "bmp", "tif", "webp", "gif", "heic", "avif"],
        help="same: each output in its input's format (a format this installation cannot write, "
        "as HEIC without an HEVC encoder, becomes jpg); else this one, the extension changed",
    )
    g.add_argument(
        "--quality",
        "--jpeg_quality",
        type=quality,
        default=95,
        help="quality of JPEG, HEIC and AVIF outputs (1-100); PNG, TIFF, BMP and WebP are lossless",
    )
    add_bool(
        g,
        "allow_corrupt",
        False,
        "enhance images with corrupt or missing data anyway (the missing part comes "
        "out grey); by default they are errors and get no output",
    )
    return p


X264_PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"]


def get_video_parser():
    p = Parser(
        description="Enhance a low-light video with SGZ: frames stream from the decoder through the "
        "network to the encoder, sound and timing kept. --choice V2I | I2V split a "
        "video into numbered frames or join frames into a video (the official workflow).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--choice",
        default="enhance",
        choices=["enhance", "V2I", "I2V"],
        help="enhance: video -> enhanced video; V2I: video -> frames in --image_lowlight_folder; "
        "I2V: frames in --image_folder (sorted numerically) -> video",
    )
    p.add_argument(
        "--video_path",
        type=path,
        default="demo/Movie/Ari.mp4",
        help="input video (enhance, V2I); for I2V the video whose frame rate the joined video takes",
    )
    p.add_argument(
        "--save_path",
        type=optional_path,
        default="",
        help="output video; default INPUT_enhanced.mp4 beside the input (enhance) or IMAGE_FOLDER.mp4 (I2V)",
    )
    p.add_argument(
        "--image_lowlight_folder",
        type=path,
        default="data/test_data/Frames",
        help="V2I: folder for the frames (0.jpg, 1.jpg, ...) or a printf pattern such as frames/%%05d.png",
    )
    p.add_argument("--image_folder", type=path, default="data/test_output/Frames", help="I2V: folder of frames to join")
    p.add_argument(
        "--fps",
        type=positive_finite,
        default=None,
        help="I2V: frame rate of the joined video (default: that of --video_path if it exists, else 30)",
    )
    p.add_argument(
        "--temporal_smoothing",
        type=temporal_smoothing,
        nargs="?",
        const=0.8,
        default=0.0,
        metavar="ALPHA",
        help="smooth the curve map across frames (exponential moving average, ALPHA = weight of the past; "
        "0.8 when given alone) against flicker; 0 enhances every frame on its own, as the paper",
    )
    p.add_argument(
        "--crf",
        type=crf,
        default=18,
        help="H.264 quality (libx264 constant rate factor; lower is better, 18 ~ visually lossless)",
    )
    p.add_argument(
        "--preset",
        default="medium",
        choices=X264_PRESETS,
        metavar="{ultrafast..veryslow}",
        help="libx264/libx265 speed/size preset (.webm: the VP9 speed that matches it)",
    )
    add_inference_args(p)
    return p


def get_demo_parser():
    p = Parser(
        description="Serve a web page where anyone tries SGZ on their own photo: upload (or pick a "
        "sample), compare before/after, download the result. Local and offline.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--host", type=host, default="127.0.0.1", help="address to listen on; 0.0.0.0 opens the page to your network"
    )
    p.add_argument("--port", type=port, default=7860, help="port to listen on; 0 picks a free one")
    p.add_argument(
        "--allowed_hosts",
        type=host_list,
        default="",
        help="comma-separated host names the server answers to when not bound to loopback (`*`: any), besides "
        "localhost and IP addresses; other Host headers are refused (against DNS rebinding)",
    )
    p.add_argument(
        "--samples_dir",
        type=path,
        default="data/test_data",
        help="the first images of this folder (if it exists) are offered as samples beside the built-in ones",
    )
    g = p.add_argument_group("limits (protect the server's memory)")
    g.add_argument("--max_upload_mb", type=positive_finite, default=40.0, help="largest upload in megabytes")
    g.add_argument(
        "--max_mpix", type=positive_finite, default=40.0, help="largest image in megapixels (read from the header)"
    )
    g.add_argument(
        "--max_network_megapixels",
        type=positive_finite,
        default=1.0,
        help="largest copy the network may run on (H*W/s^2 megapixels): scale factors that need more are refused",
    )
    g.add_argument(
        "--max_busy_mb",
        type=positive_finite,
        default=400.0,
        help="decoded photos (4 samples a pixel, 16-bit ones 2 bytes a sample; a TIFF's tile too) worked on at "
        "once, all visitors together, in MB; the server's memory peaks at about 3x this above its idle size",
    )
    g.add_argument(
        "--max_running",
        type=positive_int,
        default=2,
        help="uploads decoded, enhanced and encoded at once (the network itself runs one at a time)",
    )
    g.add_argument(
        "--max_waiting",
        type=non_negative_int,
        default=4,
        help="uploads that may wait for their turn; more at once are answered 503 with Retry-After",
    )
    add_inference_args(p)
    return p


def get_evaluate_parser():
    p = Parser(
        description="Quality numbers (PSNR, SSIM, LPIPS, NIQE, brightness) and comparison pictures "
        "for enhanced images. Files are matched across folders by their path without "
        "extension (DICM/01.jpg <-> DICM/01.png).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--pred_dir",
        type=path,
        nargs="+",
        required=True,
        metavar="DIR",
        help="folder of enhanced images, searched recursively; several folders (one per method) are compared "
        "side by side",
    )
    p.add_argument(
        "--labels",
        type=label,
        nargs="+",
        metavar="NAME",
        help="a name per --pred_dir for tables and pictures (default: the folder names)",
    )
    p.add_argument(
        "--gt_dir",
        type=path,
        metavar="DIR",
        help="ground truth: adds PSNR, SSIM (and LPIPS) of every other folder against it",
    )
    p.add_argument(
        "--input_dir",
        type=path,
        metavar="DIR",
        help="the low-light inputs: scored as a baseline row, first column of the grids, 'before' of the histogram",
    )
    p.add_argument(
        "--out_dir",
        type=path,
        default="eval_output",
        help="where per_image.csv, summary.md, summary.json and the pictures go",
    )
    add_bool(
        p,
        "crop",
        False,
        "where sizes differ, compare the common top-left region (the official test script crops to "
        "multiples of 12); without it a size mismatch is an error",
    )
    add_bool(
        p,
        "niqe",
        True,
        "NIQE (MATLAB release's model, read from the basicsr package: pip install --no-deps basicsr==1.4.2)",
    )
    add_bool(
        p,
        "lpips",
        True,
        "LPIPS (AlexNet) against --gt_dir when the lpips package and torchvision's AlexNet weights "
        "are on this machine; nothing is downloaded",
    )
    add_bool(
        p,
        "grid",
        False,
        "write side-by-side comparison images (input | methods | ground truth) to OUT_DIR/grid "
        "and a brightness histogram plot to OUT_DIR/brightness_histogram.png",
    )
    p.add_argument(
        "--grid_height",
        type=checked(validate.integer, low=8, high=4096),
        default=360,
        help="height of each picture in the grids, pixels",
    )
    p.add_argument(
        "--device",
        type=device,
        default="auto",
        help="for LPIPS: auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps",
    )
    return p


def height_x_width(value):
    """'1080x1920' -> (1080, 1920)."""
    try:
        h, w = (validate.integer(n, low=1, high=65535) for n in value.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH in pixels such as 1080x1920, got {value!r}") from None
    return h, w


def get_export_parser():
    p = Parser(
        description="Export the whole enhancement (the 1/s copy, the network, the map resized back, "
        "the 8-step curve) as one ONNX graph: input `image` float32 (N, 3, H, W) RGB in "
        "[0, 1], output `enhanced` of the same shape.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--weight_dir", type=path, default="weight/sgz.pth", help="weights file (ours or the official Epoch99.pth)"
    )
    p.add_argument(
        "--output", type=path, default="sgz.onnx", help="the .onnx file to write (replaced atomically if it exists)"
    )
    p.add_argument(
        "--scale_factor",
        type=positive_int,
        default=12,
        help="the curve map is computed on a 1/s copy of the image (fixed in the graph; 12 as test.py)",
    )
    p.add_argument(
        "--opset",
        type=checked(validate.integer),
        default=17,
        choices=range(11, 21),
        metavar="{11..20}",
        help="ONNX opset (11 is the first with Resize to a computed size)",
    )
    add_bool(
        p,
        "fp16",
        False,
        "the network's weights and convolutions in float16 (the resizes and the curve stay "
        "float32, so do the input and output); results within 2/255",
    )
    p.add_argument(
        "--fixed_size",
        type=height_x_width,
        metavar="HxW",
        help="a graph for this one image size, every shape constant, for runtimes without dynamic shapes "
        "(default: any N, H and W)",
    )
    return p
