"""SGZ web demo: upload a dark photo (or pick a sample), compare it with the enhanced result on a
before/after slider, and download the result at full resolution.

    python demo/app.py [--port 7860] [--weight_dir weight/sgz.pth]

Flask serves one page of plain HTML, CSS and JavaScript from demo/templates and demo/static: no CDN,
web font or analytics, and a Content-Security-Policy that lets the page load nothing from elsewhere.
The server keeps nothing per visitor: a photo is the body of one POST /api/enhance request, decoded
and enhanced in memory, and the PNG goes back in that request's response. The enhancement is
enhance.Enhancer, as in test.py, so the page computes exactly what `python test.py` does.
"""
import io
import mimetypes
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, from any working directory

import numpy as np
import skimage.data
from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.serving import make_server

from enhance import Enhancer
from image_io import decode_image, encode_image, find_images, load_rgb
from option import UserError, get_demo_parser, run_script

HERE = Path(__file__).resolve().parent
SCALE_CHOICES = (1, 2, 4, 8, 12, 16, 24)
STRENGTH_RANGE = (0.0, 2.0)
BUILTIN_SAMPLES = ("coffee", "astronaut", "chelsea")  # photos bundled with scikit-image (CC0 / public domain)
MAX_FOLDER_SAMPLES = 6
THUMBNAIL_SIZE = (160, 120)
# The page may load its own scripts, styles and images and the blob: URLs it makes, nothing else.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # no visitor's photo or result lingers in a cache
}


class BadRequest(Exception):
    """A request the page explains to the visitor: `message` is shown there, `status` is the HTTP code."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# Images in and out
# ---------------------------------------------------------------------------------------------
def read_body(stream, max_bytes):
    """The request body, in memory; 413 past max_bytes. Werkzeug refuses a long Content-Length by
    itself, but not a chunked body, which has none."""
    body = bytearray()
    while chunk := stream.read(1 << 20):
        body += chunk
        if len(body) > max_bytes:
            raise RequestEntityTooLarge()
    return bytes(body)


def decode_upload(data, name, max_pixels):
    """Uploaded bytes -> the array Enhancer.enhance_array takes, decoded as test.py decodes files (EXIF
    orientation, alpha and 16 bits kept; the pixel limit checked from the header, before decoding)."""
    if not data:
        raise BadRequest("No image received: choose a photo or a sample.")
    try:
        return decode_image(data, name, max_pixels)[0]
    except UserError as e:
        raise BadRequest(f"{e}. Upload a JPEG, PNG, BMP, TIFF or WebP photo.") from None


def encode_png(image):
    return encode_image(image, ".png").tobytes()


def darken(rgb):
    """A well-exposed photo made a low-light one: gamma 2.2, then half the light (mean ~0.1, as in DICM)."""
    return np.round((rgb / 255.0) ** 2.2 * 0.5 * 255).astype(np.uint8)


def collect_samples(samples_dir):
    """The page's samples as {id: (label, PNG bytes or a file's path)}: scikit-image's bundled photos
    made dark, then the first images of samples_dir (the user's own test data, if any)."""
    samples = {name: (name, encode_png(darken(getattr(skimage.data, name)()))) for name in BUILTIN_SAMPLES}
    for i, path in enumerate(find_images(samples_dir)[:MAX_FOLDER_SAMPLES]):
        samples[f"file{i}"] = (path.name, path)
    return samples


def thumbnail_jpeg(data):
    im = load_rgb(io.BytesIO(data))
    im.thumbnail(THUMBNAIL_SIZE)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Request parameters
# ---------------------------------------------------------------------------------------------
def parse_scale(text, choices):
    try:
        scale = int(text)
    except (TypeError, ValueError):
        scale = None
    if scale not in choices:
        raise BadRequest(f"scale_factor must be one of {', '.join(map(str, choices))}; got {text!r}.")
    return scale


def parse_strength(text):
    low, high = STRENGTH_RANGE
    try:
        strength = float(text)
    except (TypeError, ValueError):
        strength = float("nan")
    if not low <= strength <= high:  # also refuses nan
        raise BadRequest(f"strength must be a number from {low:g} to {high:g}; got {text!r}.")
    return strength


def check_network_size(shape, scale, choices, max_network_pixels):
    """The network runs on a 1/s copy; at a small s a big photo would need gigabytes (about 1.5 GB
    per megapixel the network sees, measured on CPU), so such a request is refused with the
    smallest scale factor that fits."""
    height, width = shape[:2]
    needed = height * width / scale ** 2
    if needed <= max_network_pixels:
        return
    fitting = [s for s in choices if height * width / s ** 2 <= max_network_pixels]
    advice = f"choose scale factor {fitting[0]} or more" if fitting else "downscale the photo first"
    raise BadRequest(f"At scale factor {scale} the network would run on {needed / 1e6:.1f} MP of this {width} x {height} "
                     f"photo; this demo allows {max_network_pixels / 1e6:g} MP: {advice}.", 413)


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------
class SerialEnhancer:
    """One Enhancer (weights loaded once, at start-up, so bad weights stop the server before the first
    visitor), one enhancement at a time: two big photos at once would double the peak memory, and one
    already keeps every core busy."""

    def __init__(self, args):
        self.enhancer = Enhancer(args.weight_dir, args.scale_factor, args.device, args.precision)
        self.lock = threading.Lock()

    def __call__(self, image, scale, strength):
        with self.lock:
            return self.enhancer.enhance_array(image, scale_factor=scale, strength=strength)


def create_app(args):
    """The Flask app; raises UserError for bad arguments (a bad weights file, fp16 on a CPU)."""
    enhancer = SerialEnhancer(args)
    samples = collect_samples(args.samples_dir)
    scales = tuple(sorted(set(SCALE_CHOICES) | {args.scale_factor}))
    max_upload_bytes = int(args.max_upload_mb * 1e6)
    app = Flask(__name__, template_folder=HERE / "templates", static_folder=HERE / "static")
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    app.config["SAMPLES"] = samples

    def sample_file(sample_id):
        """(bytes, MIME type) of a sample."""
        if sample_id not in samples:
            raise BadRequest(f"There is no sample {sample_id!r}.", 404)
        source = samples[sample_id][1]
        if isinstance(source, Path):
            return source.read_bytes(), mimetypes.guess_type(source.name)[0] or "application/octet-stream"
        return source, "image/png"

    @app.get("/")
    def index():
        return render_template("index.html", samples=[(i, label) for i, (label, _) in samples.items()],
                               scales=scales, default_scale=args.scale_factor, strength_range=STRENGTH_RANGE,
                               max_upload_bytes=max_upload_bytes)

    @app.get("/api/samples/<sample_id>")
    def sample(sample_id):
        data, mimetype = sample_file(sample_id)
        return Response(data, mimetype=mimetype)

    @app.get("/api/samples/<sample_id>/thumbnail")
    def sample_thumbnail(sample_id):
        return Response(thumbnail_jpeg(sample_file(sample_id)[0]), mimetype="image/jpeg")

    @app.post("/api/enhance")
    def enhance():
        """Body: the image file's bytes. Query: scale_factor, strength, name (the file's). Answer: the enhanced PNG."""
        scale = parse_scale(request.args.get("scale_factor", args.scale_factor), scales)
        strength = parse_strength(request.args.get("strength", 1.0))
        name = request.args.get("name", "upload")[:200]  # only for the messages
        image = decode_upload(read_body(request.stream, max_upload_bytes), name, args.max_mpix * 1e6)
        check_network_size(image.shape, scale, scales, args.max_network_megapixels * 1e6)
        return Response(encode_png(enhancer(image, scale, strength)), mimetype="image/png")

    @app.errorhandler(BadRequest)
    def bad_request(e):
        return jsonify(error=str(e)), e.status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(e):
        return jsonify(error=f"The file is larger than the {args.max_upload_mb:g} MB this demo accepts; "
                             "send a smaller one."), 413

    @app.errorhandler(HTTPException)
    def http_error(e):
        return jsonify(error=f"{e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def server_error(e):
        app.logger.exception("enhancement failed")  # the traceback goes to the operator's terminal
        return jsonify(error=f"The server could not enhance this image ({type(e).__name__}: {e}). "
                             "Try a larger scale factor or a smaller photo."), 500

    @app.after_request
    def add_security_headers(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    return app


def url_host(host):
    """The address to print for a browser: a wildcard address is reachable as localhost."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)


def listen(host, port):
    """A listening socket; werkzeug's own binding would print two lines and exit on a busy port."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another port with --port") from None


def main(args):
    app = create_app(args)
    sock = listen(args.host, args.port)
    server = make_server(args.host, args.port, app, threaded=True, fd=sock.fileno())
    folder_samples = sum(isinstance(source, Path) for _, source in app.config["SAMPLES"].values())
    print(f"samples: {len(BUILTIN_SAMPLES)} built-in, {folder_samples} from {args.samples_dir}", flush=True)
    print(f"SGZ demo running: open http://{url_host(args.host)}:{sock.getsockname()[1]} in a browser (Ctrl+C stops it)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    sys.exit(run_script(main, get_demo_parser()))
