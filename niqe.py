"""NIQE (Mittal, Soundararajan & Bovik, "Making a 'completely blind' image quality analyzer", 2013),
computed step for step as the authors' MATLAB release (niqe_release/computequality.m) computes it:

grey = rgb2gray(uint8 RGB) -> crop to whole 96x96 blocks -> at 2 scales: MSCN coefficients (7x7
Gaussian, sigma 7/6, replicate borders) -> per block 18 AGGD features -> MATLAB imresize(0.5) (bicubic,
antialiased) for the next scale -> 36-d features per block -> Mahalanobis-like distance between their
Gaussian fit (nanmean, complete-row cov) and the pristine model's. Lower is more natural.

The pristine model (36-d mean, 36x36 covariance) is the one shipped with the MATLAB release, read from
the copy that the `iqa-torch` package installs (iqa/niqe/niqe_pris_params.npz, in requirements.txt: a 67 KB
Apache-2.0 wheel; the file is byte for byte basicsr's and mmedit's copy); nothing is downloaded. The package
is located through its installed metadata, never imported.
"""

import importlib.metadata
from functools import cache
from pathlib import Path

import numpy as np
from scipy.ndimage import correlate1d
from scipy.special import gamma

BLOCK_SIZE = 96  # the release's block size, the one its pristine model was fitted with
# MATLAB rgb2gray: the luma row of the inverse NTSC (YIQ) transform.
RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
# MATLAB fspecial('gaussian', 7, 7/6), normalised; it is separable, so it is applied as two 1-D passes.
_g = np.exp(-(np.arange(-3, 4) ** 2) / (2 * (7 / 6) ** 2))
GAUSSIAN_7 = _g / _g.sum()
# estimateaggdparam.m's search grid for the AGGD shape and its ratio function.
AGGD_SHAPES = np.arange(0.2, 10.001, 0.001)
AGGD_RATIOS = gamma(2 / AGGD_SHAPES) ** 2 / (gamma(1 / AGGD_SHAPES) * gamma(3 / AGGD_SHAPES))
PAIR_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical and the two diagonal neighbours
INSTALL_HINT = "pip install iqa-torch==1.2.1 (it is in requirements.txt)"
PRISTINE_MODEL_FILE = ("iqa-torch", "iqa/niqe/niqe_pris_params.npz")  # (distribution, path inside it)


class NIQEUnavailable(RuntimeError):
    """The pristine model's parameters are not installed."""


@cache
def pristine_model():
    """(mean (36,), covariance (36, 36)) of the MATLAB release's pristine model."""
    distribution, relative_path = PRISTINE_MODEL_FILE
    try:
        path = Path(importlib.metadata.distribution(distribution).locate_file(relative_path))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise NIQEUnavailable(f"its pristine model ships with the {distribution} package: {INSTALL_HINT}")
    with np.load(path) as params:
        return params["mu_pris_param"].ravel(), params["cov_pris_param"]


def rgb_to_matlab_gray(rgb):
    """(H, W, 3) RGB in [0, 1] -> (H, W) float64 grey levels 0..255, rounded to integers as MATLAB's
    rgb2gray rounds its uint8 result."""
    return np.round(rgb @ (RGB2GRAY * 255.0))


def _cubic(x):
    """MATLAB imresize's bicubic kernel (Keys, a = -0.5)."""
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * (
        (ax > 1) & (ax <= 2)
    )


def _resize_weights(in_len, scale):
    """imresize.m's contributions(): (weights (out, P), source indices (out, P)) for one axis,
    antialiased when shrinking, borders mirrored."""
    out_len = int(np.ceil(in_len * scale))
    width = 4.0 / scale if scale < 1 else 4.0
    kernel_scale = min(scale, 1.0)
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)  # output centres in 1-based input coordinates
    left = np.floor(u - width / 2)
    idx = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None, :]
    w = kernel_scale * _cubic(kernel_scale * (u[:, None] - idx))
    w /= w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(idx - 1, 2 * in_len).astype(int)]
    keep = np.any(w != 0, axis=0)
    return w[:, keep], idx[:, keep]


def imresize_matlab(image, scale):
    """MATLAB's imresize(image, scale) for a 2-D float image (bicubic, antialiasing on): rows first, then columns."""
    for axis in (0, 1):
        w, idx = _resize_weights(image.shape[axis], scale)
        image = np.moveaxis(image, axis, 0)
        image = np.einsum("op,op...->o...", w, image[idx])
        image = np.moveaxis(image, 0, axis)
    return image


def mscn(image):
    """Mean-subtracted contrast-normalised coefficients (computequality.m's `structdis`)."""

    def blur(x):
        return correlate1d(correlate1d(x, GAUSSIAN_7, axis=0, mode="nearest"), GAUSSIAN_7, axis=1, mode="nearest")

    mu = blur(image)
    sigma = np.sqrt(np.abs(blur(image * image) - mu * mu))
    coefficients = (image - mu) / (sigma + 1)
    # In a flat 7x7 neighbourhood the coefficient is 0, but any filter leaves +-1e-14 of rounding noise whose
    # signs then drive the AGGD fit (MATLAB's own scores depend on its filter's summation order there). The
    # smallest genuine coefficient of an 8-bit image is ~1e-7, so below 1e-8 is noise: make it the exact 0.
    coefficients[np.abs(coefficients) < 1e-8] = 0
    return coefficients


def nearest_shape(ratio):
    """The grid shape whose ratio is nearest, as estimateaggdparam.m's min((r_gam - ratio).^2) finds it
    (the ratios rise strictly, so a binary search does it); NaN gives the first shape, as MATLAB's min does."""
    i = np.clip(np.searchsorted(AGGD_RATIOS, ratio), 1, len(AGGD_RATIOS) - 1)
    i = np.where(ratio - AGGD_RATIOS[i - 1] <= AGGD_RATIOS[i] - ratio, i - 1, i)
    return AGGD_SHAPES[np.where(np.isnan(ratio), 0, i)]


def aggd_fit(x):
    """estimateaggdparam.m for each row of x (N, P): (shape alpha, left scale, right scale), each (N,).
    A row with no negative (or no positive) values gives NaN scales and alpha 0.2, as MATLAB does."""
    sq = x * x
    negative, positive = x < 0, x > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt((sq * negative).sum(1) / negative.sum(1))
        right_std = np.sqrt((sq * positive).sum(1) / positive.sum(1))
        g = left_std / right_std
        r_hat = np.abs(x).mean(1) ** 2 / sq.mean(1)
        r_norm = r_hat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = nearest_shape(r_norm)
    scale = np.sqrt(gamma(1 / alpha) / gamma(3 / alpha))
    return alpha, left_std * scale, right_std * scale


def block_features(blocks):
    """computefeature.m for each block of (N, b, b) MSCN coefficients -> (N, 18)."""
    flat = blocks.reshape(len(blocks), -1)
    alpha, left, right = aggd_fit(flat)
    features = [alpha, (left + right) / 2]
    for shift in PAIR_SHIFTS:
        pairs = flat * np.roll(blocks, shift, axis=(1, 2)).reshape(len(blocks), -1)  # circshift within the block
        alpha, left, right = aggd_fit(pairs)
        features += [alpha, (right - left) * gamma(2 / alpha) / gamma(1 / alpha), left, right]
    return np.stack(features, axis=1)


def to_blocks(image, size):
    """(H, W) with H, W multiples of size -> (N, size, size), the same block order at every scale."""
    h, w = image.shape
    return image.reshape(h // size, size, w // size, size).swapaxes(1, 2).reshape(-1, size, size)


def niqe(gray):
    """NIQE of (H, W) grey levels 0..255, as `rgb_to_matlab_gray` makes them from RGB. NaN when the image
    holds fewer than two whole 96x96 blocks (no covariance can be fitted). Raises NIQEUnavailable when
    the pristine model is not installed."""
    mu_pristine, cov_pristine = pristine_model()
    rows, cols = gray.shape[0] // BLOCK_SIZE, gray.shape[1] // BLOCK_SIZE
    if rows * cols < 2:
        return float("nan")
    image = gray[: rows * BLOCK_SIZE, : cols * BLOCK_SIZE]
    features = []
    for scale in (1, 2):
        features.append(block_features(to_blocks(mscn(image), BLOCK_SIZE // scale)))
        if scale == 1:
            image = imresize_matlab(image, 0.5)
    features = np.concatenate(features, axis=1)  # (N, 36)
    mu = np.nanmean(features, axis=0)
    complete = features[~np.isnan(features).any(axis=1)]
    if len(complete) < 2:
        return float("nan")
    cov = np.cov(complete, rowvar=False)
    diff = mu_pristine - mu
    return float(np.sqrt(diff @ np.linalg.pinv((cov_pristine + cov) / 2) @ diff))
