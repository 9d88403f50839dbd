"""Command-line parsers for every script. Nothing is parsed at import: scripts call
`get_*_parser().parse_args()` under `if __name__ == "__main__"`, tests pass their own argv.

The official flag names and defaults are kept (so commands from the paper's README work), with
booleans that mean what they say and paths that need no trailing slash.
"""
import argparse


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


def positive_int(value):
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def add_bool(parser, name, default, help):
    """`--flag`, `--flag true|false` and `--no-flag` all work."""
    parser.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)
    parser.add_argument(f"--no-{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


def add_model_args(parser, scale_factor):
    g = parser.add_argument_group("network")
    g.add_argument("--scale_factor", type=positive_int, default=scale_factor,
                   help=f"compute the curve map on a 1/s copy of the image and resize it back (default {scale_factor}; "
                        "the paper trains at 1 and tests at 12)")
    g.add_argument("--conv_type", default="dsc", choices=["dsc", "tc"],
                   help="dsc: depthwise-separable convs (the paper); tc: plain 3x3 convs (ablation). "
                        "When loading weights the type is read from the file.")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    return g


def get_train_parser():
    p = argparse.ArgumentParser(description="Train SGZ (zero-reference, semantic-guided) on a folder of low-light images.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--lowlight_images_path", default="data/train_data",
                   help="folder of training images, searched recursively (jpg, png, bmp, tif, webp)")
    g.add_argument("--image_size", type=positive_int, default=512, help="training images are resized to this square size (Lanczos)")
    g.add_argument("--num_workers", type=int, default=4, help="data-loading worker processes")
    g = p.add_argument_group("optimisation")
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    g.add_argument("--weight_decay", type=float, default=1e-4, help="Adam weight decay")
    g.add_argument("--grad_clip_norm", type=float, default=0.1, help="clip the gradient's global norm to this")
    g.add_argument("--num_epochs", type=positive_int, default=100, help="epochs to train (in total, counting resumed ones)")
    g.add_argument("--train_batch_size", type=positive_int, default=6, help="images per step (per process under torchrun)")
    g.add_argument("--seed", type=int, default=1143, help="seed for shuffling and initialisation")
    add_bool(g, "amp", False, "mixed precision: bfloat16 autocast on CPU, fp16 (with loss scaling) or bf16 on CUDA")
    g = p.add_argument_group("loss (the paper's weights by default)")
    g.add_argument("--tv_weight", type=float, default=1600.0, help="illumination smoothness (TV of the curve map)")
    g.add_argument("--spa_weight", type=float, default=1.0, help="8-neighbour spatial consistency")
    g.add_argument("--color_weight", type=float, default=5.0, help="colour constancy")
    g.add_argument("--exp_weight", type=float, default=10.0, help="exposure control")
    g.add_argument("--seg_weight", type=float, default=0.1, help="semantic (focal) loss; 0 skips the segmentation net")
    g.add_argument("--patch_size", type=int, default=4, choices=[3, 4, 5], help="pooling patch of the spatial consistency loss")
    g.add_argument("--exp_level", type=float, default=0.6, help="well-exposedness level E of the exposure loss")
    g.add_argument("--num_of_SegClass", type=positive_int, default=21, help="classes of the segmentation head (VOC = 21)")
    g.add_argument("--seg_backbone", default="imagenet",
                   help="segmentation backbone weights: imagenet (torchvision's, from its cache or downloaded), "
                        "random, or the path of a local ResNet-50 state_dict")
    g = p.add_argument_group("checkpoints and logging")
    g.add_argument("--snapshots_folder", default="weight", help="where EpochN.pth, last.pth and the loss log go")
    add_bool(g, "load_pretrain", False, "start from the weights in --pretrain_dir")
    g.add_argument("--pretrain_dir", default="weight/Epoch99.pth", help="weights to start from with --load_pretrain")
    g.add_argument("--resume", default="", help="continue a run from its full checkpoint (e.g. weight/last.pth)")
    g.add_argument("--display_iter", type=positive_int, default=10, help="log the losses every N steps")
    g.add_argument("--snapshot_iter", type=positive_int, default=10, help="write the checkpoints every N steps (and at each epoch's end)")
    add_model_args(p, scale_factor=1)
    return p


def get_test_parser():
    p = argparse.ArgumentParser(description="Enhance low-light images with SGZ.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input_dir", default="data/test_data", help="an image, or a folder searched recursively")
    p.add_argument("--test_dir", default="test_output", help="output folder; the input tree is mirrored under it")
    p.add_argument("--weight_dir", default="weight/sgz.pth", help="weights file (ours or the official Epoch99.pth)")
    add_model_args(p, scale_factor=12)
    return p
