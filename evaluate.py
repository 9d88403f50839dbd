"""Quality numbers and comparison pictures for enhanced images.

    python evaluate.py --pred_dir out/ours out/official --input_dir data/test_data --grid
    python evaluate.py --pred_dir out/ours --gt_dir data/LOL/high --crop

Every folder (inputs, each method, ground truth) is read recursively and its files are matched by their
path without extension, so DICM/01.jpg meets DICM/01.png. For each image and folder:
- PSNR and SSIM against --gt_dir, on RGB in [0, 1] (8-bit / 255, 16-bit / 65535; alpha dropped):
  PSNR from the MSE over all pixels and channels (data_range 1); SSIM as Wang et al. 2004 (11x11
  Gaussian window, sigma 1.5, population statistics, data_range 1) per channel, then averaged.
- LPIPS (AlexNet, v0.1) against --gt_dir, when the lpips package and torchvision's AlexNet weights are
  on this machine (nothing is downloaded; otherwise one line says it is skipped).
- NIQE as the authors' MATLAB release computes it on rgb2gray (see niqe.py).
- Brightness: the mean of Y' = 0.299 R + 0.587 G + 0.114 B as 8-bit levels (MATLAB rgb2gray's, NIQE's
  input), divided by 255.
Out: OUT_DIR/per_image.csv, summary.md and summary.json (means per folder and over all images), the
summary on stdout, and with --grid one comparison picture per image plus a brightness histogram plot.

Each image (all its methods' files together) is scored on its own: any failure (an unreadable file, sizes
that disagree, out of memory) is one line naming it (runtime.input_failure; SGZ_DEBUG=1 adds the
traceback), that image is left out of the tables, the others are scored, and the run exits 1. A metric an
image is too small for (SSIM's 11x11 window, NIQE's two 96x96 blocks) is NaN with a note, left out of the means.
"""

import csv
import json
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

import niqe
from image_io import IMAGE_EXTENSIONS, find_images, read_image, write_image
from model import get_device
from option import get_evaluate_parser
from runtime import (
    EXIT_SOME_INPUTS_FAILED,
    UserError,
    atomic_output,
    check_output_folder,
    check_output_path,
    contained,
    run_script,
)

INPUT, GT = "input", "ground truth"
METRICS = {  # name: (column title, better when higher?, definition written to summary.json)
    "psnr": ("PSNR (dB)", True, "RGB in [0, 1], data_range 1, MSE over all pixels and channels (skimage)"),
    "ssim": (
        "SSIM",
        True,
        "RGB in [0, 1], data_range 1, per channel then averaged; 11x11 Gaussian window, "
        "sigma 1.5, population covariance (Wang et al. 2004; skimage)",
    ),
    "lpips": ("LPIPS", False, "lpips package v0.1, AlexNet, inputs in [-1, 1]"),
    "niqe": ("NIQE", False, "MATLAB release (Mittal et al. 2013): rgb2gray, 96x96 blocks, its pristine model"),
    "brightness": ("brightness", None, "mean of 0.299 R + 0.587 G + 0.114 B as 8-bit levels (MATLAB rgb2gray) / 255"),
}
ALEXNET = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1, which LPIPS is built on


# ---------------------------------------------------------------------------------------------
# Finding and matching the images
# ---------------------------------------------------------------------------------------------
def source_folders(args):
    """{label: folder} in column order: inputs, methods, ground truth."""
    labels = args.labels or [Path(d).name or str(d) for d in args.pred_dir]
    if len(labels) != len(args.pred_dir):
        raise UserError(
            f"--labels gives {len(labels)} names for {len(args.pred_dir)} --pred_dir folders; give one per folder"
        )
    if len(set(labels)) != len(labels) or {INPUT, GT} & set(labels):
        raise UserError(f"method names {labels} repeat or use '{INPUT}'/'{GT}'; name them with --labels")
    pairs = ([(INPUT, args.input_dir)] if args.input_dir else []) + list(zip(labels, args.pred_dir))
    pairs += [(GT, args.gt_dir)] if args.gt_dir else []
    return {label: Path(folder) for label, folder in pairs}


def index_images(folder):
    """{key: path} of the images under folder, key = relative path without extension (posix)."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give the folder that holds the images")
    index = {}
    for path in find_images(folder):
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in index:
            raise UserError(f"{index[key]} and {path} have the same name; keep one of them")
        index[key] = path
    if not index:
        raise UserError(f"no images in {folder} (looked for {' '.join(IMAGE_EXTENSIONS)}, recursively)")
    return index


def match_images(folders):
    """(sorted keys present in every folder, {label: {key: path}}); files that some folders lack are named
    in a warning."""
    indexes = {label: index_images(folder) for label, folder in folders.items()}
    common = sorted(set.intersection(*(set(i) for i in indexes.values())))
    if not common:
        sample = ", ".join(f"{folders[label]}: {next(iter(i))}" for label, i in indexes.items())
        raise UserError(
            f"no file name is in every folder (e.g. {sample}); files are matched by their path "
            "without extension, so mirror the folder trees"
        )
    for label, index in indexes.items():
        extra = sorted(set(index) - set(common))
        if extra:
            print(
                f"warning: {len(extra)} image(s) in {folders[label]} have no match in the other folders and are "
                f"left out: {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}",
                file=sys.stderr,
            )
    return common, indexes


def read_rgb(path):
    """An image file as float64 (H, W, 3) RGB in [0, 1] (grey is repeated, alpha dropped)."""
    try:
        image, _ = read_image(path)
    except UserError as e:  # it names the file
        raise UserError(f"{e}; replace the file or move it out of the folder") from None
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    if image.ndim == 2:
        image = image[..., None]
    return np.broadcast_to(image[..., :3], image.shape[:2] + (3,)) / scale


def common_size(images, paths, crop):
    """The images cropped to their common top-left region when crop, else unchanged if all sizes agree."""
    sizes = {label: image.shape[:2] for label, image in images.items()}
    if len(set(sizes.values())) == 1:
        return images
    if not crop:
        first = next(iter(sizes))
        other = next(label for label, size in sizes.items() if size != sizes[first])
        (h1, w1), (h2, w2) = sizes[first], sizes[other]
        raise UserError(
            f"{paths[other]} is {w2}x{h2} but {paths[first]} is {w1}x{h1}; pass --crop to "
            "compare their common top-left region"
        )
    h, w = min(s[0] for s in sizes.values()), min(s[1] for s in sizes.values())
    return {label: image[:h, :w] for label, image in images.items()}


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------
SSIM_WINDOW = 11  # SSIM's Gaussian window (sigma 1.5, truncated at 3.5 sigma) spans 11 pixels: a smaller side has none


def psnr_ssim(pred, gt):
    """PSNR and SSIM; SSIM is NaN for an image with a side under SSIM_WINDOW."""
    with np.errstate(divide="ignore"):  # identical images: PSNR is inf
        psnr = peak_signal_noise_ratio(gt, pred, data_range=1.0)
    if min(gt.shape[:2]) < SSIM_WINDOW:
        return float(psnr), float("nan")
    ssim = structural_similarity(
        gt, pred, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    return float(psnr), float(ssim)


def load_lpips(device):
    """A function (pred, gt) -> LPIPS, or None after one line saying why it is skipped. Never downloads."""
    try:
        import lpips
    except ImportError:
        print("note: LPIPS skipped: the lpips package is not installed (pip install lpips)", file=sys.stderr)
        return None
    weights = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET
    if not weights.is_file():
        print(
            f"note: LPIPS skipped: torchvision's AlexNet weights are not at {weights} (copy {ALEXNET} there; "
            "nothing is downloaded)",
            file=sys.stderr,
        )
        return None
    import torchvision

    alexnet = torchvision.models.alexnet()
    alexnet.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    with warnings.catch_warnings():  # lpips asks torchvision for a random AlexNet with the deprecated `pretrained=`
        warnings.simplefilter("ignore")
        net = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)
    for block in (net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5):
        for index, layer in block.named_children():  # the slices hold AlexNet's feature layers under their indices
            layer.load_state_dict(alexnet.features[int(index)].state_dict())
    net = net.to(device).eval()

    def to_tensor(rgb):  # (H, W, 3) in [0, 1] -> (1, 3, H, W) in [-1, 1], as LPIPS expects
        return torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None].to(device) * 2 - 1

    def lpips_distance(pred, gt):
        with torch.inference_mode():
            return float(net(to_tensor(pred), to_tensor(gt)))

    return lpips_distance


def niqe_available():
    try:
        niqe.pristine_model()
        return True
    except niqe.NIQEUnavailable as e:
        print(f"note: NIQE skipped: {e}", file=sys.stderr)
        return False


def score(rgb, gt, compute_niqe, lpips_distance):
    """({metric: value}, grey levels) for one image (gt None: no full-reference metrics). The grey levels
    (MATLAB rgb2gray's, 0..255) are NIQE's input, the brightness and the histogram's bins."""
    gray = niqe.rgb_to_matlab_gray(rgb)
    row = {"brightness": float(gray.mean() / 255)}
    if compute_niqe:
        row["niqe"] = niqe.niqe(gray)
    if gt is not None:
        row["psnr"], row["ssim"] = psnr_ssim(rgb, gt)
        if lpips_distance:
            row["lpips"] = lpips_distance(rgb, gt)
    return row, gray


def summarize(rows, metrics):
    """Mean of each metric per (method, folder), then over all of a method's images (NaN-free means;
    'images' counts the rows)."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["folder"])].append(row)
    folders = sorted({row["folder"] for row in rows})
    if len(folders) > 1:
        for row in rows:
            groups[(row["method"], "all")].append(row)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    summary = []
    for method in methods:
        for folder in folders + (["all"] if len(folders) > 1 else []):
            group = groups[(method, folder)]
            entry = {"method": method, "folder": folder, "images": len(group)}
            for m in metrics:
                values = np.array([r[m] for r in group if m in r], dtype=float)
                values = values[~np.isnan(values)]
                if len(values):
                    entry[m] = float(values.mean())
            summary.append(entry)
    return summary


def markdown_table(summary, metrics):
    metrics = [m for m in metrics if any(m in e for e in summary)]
    arrows = {True: " ↑", False: " ↓", None: ""}
    head = ["method", "folder", "images"] + [METRICS[m][0] + arrows[METRICS[m][1]] for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [e["method"], e["folder"], str(e["images"])] + [f"{e[m]:.4f}" if m in e else "–" for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------
def caption(label, row):
    numbers = [f"{METRICS[m][0].split()[0]} {row[m]:.2f}" for m in ("psnr", "niqe") if m in row and np.isfinite(row[m])]
    return "  ".join([label] + numbers)


def comparison_grid(tiles, height):
    """[(caption, rgb)] -> one uint8 RGB picture: the images side by side at `height`, a caption above each."""
    bar, gap = max(24, height // 12), 6
    font = ImageFont.load_default(size=int(bar * 0.6))
    resized = []
    for text, rgb in tiles:
        h, w = rgb.shape[:2]
        image = np.round(rgb * 255).astype(np.uint8)
        size = (max(1, round(w * height / h)), height)
        resized.append((text, cv2.resize(image, size, interpolation=cv2.INTER_AREA if h > height else cv2.INTER_CUBIC)))
    canvas = Image.new("RGB", (sum(t.shape[1] for _, t in resized) + gap * (len(resized) - 1), bar + height), "white")
    draw, x = ImageDraw.Draw(canvas), 0
    for text, tile in resized:
        canvas.paste(Image.fromarray(tile), (x, bar))
        draw.text((x + tile.shape[1] / 2, bar / 2), text, fill="black", font=font, anchor="mm")
        x += tile.shape[1] + gap
    return np.asarray(canvas)


def plot_brightness_histograms(histograms, summary, path):
    """One panel per folder: for every source, the distribution of pixel brightness over its images (each
    image weighs the same), labelled with the mean brightness of the summary."""
    import matplotlib  # here, not at the top: only --grid needs it, and it takes a while to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folders = sorted({folder for _, folder in histograms})
    methods = list(dict.fromkeys(method for method, _ in histograms))
    entries = {(e["method"], e["folder"]): e for e in summary}
    fig, axes = plt.subplots(1, len(folders), figsize=(4.2 * len(folders), 3.4), squeeze=False, sharey=True)
    levels = np.arange(256) / 255
    for ax, folder in zip(axes[0], folders):
        for method in methods:
            entry = entries[(method, folder)]
            fraction = histograms[(method, folder)] / entry["images"]
            ax.plot(
                levels,
                np.convolve(fraction, np.ones(5) / 5, mode="same"),  # 5-level moving average
                label=f"{method} (mean {entry['brightness']:.3f})",
                linestyle="--" if method == INPUT else "-",
            )
        ax.set_title(f"{folder} ({entry['images']} images)")
        ax.set_xlabel("brightness Y'")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("fraction of pixels")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=150)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Output files
# ---------------------------------------------------------------------------------------------
def write_csv(rows, metrics, path):
    fields = ["method", "folder", "image", "file", "width", "height"] + metrics
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_text(text, path):
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)


def check_out_dir(out_dir, folders):
    out = out_dir.resolve()
    for folder in folders.values():
        if out == folder.resolve() or folder.resolve() in out.parents:
            raise UserError(
                f"--out_dir {out_dir} lies inside {folder}: its pictures would be read as images "
                "next time; choose another folder"
            )


def evaluate(args, failed=None):
    """Score every matched image, write the tables (and pictures) to --out_dir; returns the summary. The
    line of each image that could not be scored is appended to `failed`."""
    folders = source_folders(args)
    out_dir = check_output_folder(Path(args.out_dir))
    for name in ("per_image.csv", "summary.md", "summary.json", "brightness_histogram.png"):
        check_output_path(out_dir / name)  # before any image is scored
    check_out_dir(out_dir, folders)
    keys, indexes = match_images(folders)
    compute_niqe = args.niqe and niqe_available()
    lpips_distance = load_lpips(get_device(args.device)) if args.gt_dir and args.lpips else None
    metrics = [
        m
        for m in METRICS
        if m == "brightness"
        or (m == "niqe" and compute_niqe)
        or (m in ("psnr", "ssim") and args.gt_dir)
        or (m == "lpips" and lpips_distance)
    ]

    rows, histograms = [], defaultdict(lambda: np.zeros(256))
    failed = [] if failed is None else failed

    def report(line):
        failed.append(line)
        tqdm.write(f"error: {line}", file=sys.stderr)

    for key in tqdm(keys, desc="evaluating", unit="image"):
        paths = {label: indexes[label][key] for label in folders}
        with contained(key, report):  # one image's rows, bins and grid, all or nothing
            image_rows, image_histograms = score_image(args, key, paths, out_dir, compute_niqe, lpips_distance)
            rows += image_rows
            for where, bins in image_histograms.items():
                histograms[where] += bins

    summary = summarize(rows, metrics)
    table = markdown_table(summary, metrics)
    write_csv(rows, metrics, out_dir / "per_image.csv")
    write_text(table, out_dir / "summary.md")
    settings = {
        "folders": {label: str(folder) for label, folder in folders.items()},
        "crop": args.crop,
        "images": len(keys),
        "metrics": {m: METRICS[m][2] for m in metrics},
    }
    write_text(json.dumps({"settings": settings, "summary": summary}, indent=2) + "\n", out_dir / "summary.json")
    if args.grid:
        plot_brightness_histograms(histograms, summary, out_dir / "brightness_histogram.png")
    print(table, end="")
    pictures = ", grid/, brightness_histogram.png" if args.grid else ""
    print(f"wrote {out_dir / 'per_image.csv'}, summary.md, summary.json{pictures}", file=sys.stderr)
    if failed:
        print(f"error: {len(failed)} of {len(keys)} images could not be scored (named above)", file=sys.stderr)
    return summary


def score_image(args, key, paths, out_dir, compute_niqe, lpips_distance):
    """The rows ({method, folder, image, file, size, metrics}) and brightness bins ({(method, folder): bins})
    of one image across the folders, and its comparison picture with --grid."""
    images = common_size({label: read_rgb(path) for label, path in paths.items()}, paths, args.crop)
    folder = Path(key).parent.as_posix()
    rows, histograms, scored = [], {}, []
    for label, rgb in images.items():
        row, gray = score(rgb, images[GT] if args.gt_dir and label != GT else None, compute_niqe, lpips_distance)
        if np.isnan(row.get("niqe", 0.0)):
            print(
                f"note: NIQE is undefined for {paths[label]} (it needs two whole 96x96 blocks); left out of the means",
                file=sys.stderr,
            )
        if np.isnan(row.get("ssim", 0.0)):
            print(
                f"note: SSIM is undefined for {paths[label]} (a side under its {SSIM_WINDOW}x{SSIM_WINDOW} "
                "window); left out of the means",
                file=sys.stderr,
            )
        rows.append(
            {
                "method": label,
                "folder": folder,
                "image": key,
                "file": str(paths[label]),
                "width": rgb.shape[1],
                "height": rgb.shape[0],
                **row,
            }
        )
        histograms[(label, folder)] = np.bincount(gray.astype(np.uint8).ravel(), minlength=256) / gray.size
        scored.append((caption(label, row), rgb))
    if args.grid:
        write_image(out_dir / "grid" / f"{key}.jpg", comparison_grid(scored, args.grid_height), jpeg_quality=90)
    return rows, histograms


def main(args):
    failed = []
    evaluate(args, failed)
    return EXIT_SOME_INPUTS_FAILED if failed else 0


if __name__ == "__main__":
    sys.exit(run_script(main, get_evaluate_parser()))
