"""SGZ web demo: upload a dark photo (or pick a sample), compare it with the enhanced result on a
before/after slider, and download the result at full resolution.

    python demo/app.py [--port 7860] [--weight_dir weight/sgz.pth]

waitress, a production WSGI server, serves it (bounded threads, request bodies and idle connections),
and the app admits uploads against a budget of decoded bytes shared by all requests in flight, so the
page can face the open internet. The app alone (for a WSGI server of your own) is `wsgi_app`.

Flask serves one page of plain HTML, CSS and JavaScript from demo/templates and demo/static: no CDN,
web font or analytics, and a Content-Security-Policy that lets the page load nothing from elsewhere.
The server keeps nothing per visitor: a photo is the body of one POST /api/enhance request, decoded
and enhanced in memory, and the PNG goes back in that request's response. The enhancement is
enhance.Enhancer, as in test.py, so the page computes exactly what `python test.py` does. Of a
multi-frame upload (an animated WebP or APNG, a multi-page TIFF) the first frame is enhanced.

Containment: one request's failure is that request's alone. What the app cannot decode is answered 422
(415 for a format it does not offer, 413 for what is too large), a fault of its own 500; every error body is
a generic sentence from this module, never a path or an exception's text (the operator's terminal gets the
input_failure line, and with SGZ_DEBUG=1 the traceback).

Host allow-list (against DNS rebinding: a page whose name is made to resolve to 127.0.0.1 would otherwise
drive a local server from a visitor's browser). Bound to a loopback address, the app answers only to
localhost, *.localhost and loopback IP addresses (any port); otherwise to those and to any IP address (a
name that can be rebound is a DNS name, not an address). The names in --allowed_hosts (comma-separated; `*`
allows any) are answered to either way: the public name a reverse proxy on this machine passes on in Host.
Another Host header gets 421 Misdirected Request.

Security headers: every answer of the app carries SECURITY_HEADERS, and so do waitress's own error pages
(a malformed request, headers too large, a body over the limit), through its error task class (waitress
has no option for it). Connections waitress refuses or closes without an answer (over connection_limit,
idle past channel_timeout) have no page to carry them.
"""

import collections
import contextlib
import io
import ipaddress
import mimetypes
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, from any working directory

import numpy as np
import skimage.data
from flask import Flask, Response, jsonify, render_template, request, send_file
from PIL import Image
from waitress import create_server
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from enhance import Enhancer
from image_io import decode_image, encode_image, find_images, image_header, load_rgb
from option import get_demo_parser
from runtime import UserError, input_failure, run_script

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOOPBACK_NAMES = ("localhost",)  # and *.localhost, which resolves to loopback only (RFC 6761)
UNREADABLE = "This file could not be read as an image. Upload a JPEG, PNG, BMP, TIFF or WebP photo."
SERVER_FAULT = "The server could not enhance this image (a fault of its own, logged). Try a larger scale factor."
SCALE_CHOICES = (1, 2, 4, 8, 12, 16, 24)
STRENGTH_RANGE = (0.0, 2.0)
BUILTIN_SAMPLES = ("coffee", "astronaut", "chelsea")  # photos bundled with scikit-image (CC0 / public domain)
MAX_FOLDER_SAMPLES = 6
THUMBNAIL_SIZE = (160, 120)
# What the page offers to decode (image_io reads more: every format is another decoder facing the internet).
UPLOAD_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP")
# A progressive JPEG's decoder goes over the whole image once per scan, and libjpeg reads every scan a file
# holds: 20,000 scans in 1.5 MB cost minutes of CPU. Cameras and encoders write 1 (baseline) to about 10
# (libjpeg's progressive script: 10 for colour); 100 is also libtiff's default limit for a JPEG inside a TIFF
# (LIBTIFF_JPEG_MAX_ALLOWED_SCAN_NUMBER), which covers the TIFFs this demo reads.
MAX_JPEG_SCANS = 100
# The enhancement works a band of whole rows at a time, at least one row: 48 bytes a column. A 20,000,000 x 2
# PNG (0.1 MB, 40 MP) would need 2.2 GB where its decoded size says 0.1 GB. No photo is wider or taller than
# 65,535 pixels, the most a JPEG can hold.
MAX_SIDE = 65_535
QUEUE_TIMEOUT_S = 30  # an upload waiting this long for its turn is answered 503
RETRY_AFTER_S = 10  # what a 503 tells the client to wait: a few photos' work on a typical CPU
LIGHT_THREADS = 4  # waitress threads beyond the uploads' (page, scripts, samples: never queued behind work)
CONNECTION_LIMIT = 1000  # open connections; idle ones cost a socket, not a thread (waitress multiplexes them)
CHANNEL_TIMEOUT_S = 30  # a connection silent this long (idle, or a stalled upload) is closed
# Bytes of a connection's request, and of its answer, that waitress keeps in memory; past it they wait in a
# temporary file, so 1000 connections hold at most 64 MB each way (waitress's defaults: 0.5 and 1 MB).
BUFFER_IN_MEMORY = 65_536
MAX_HEADER_BYTES = 65_536  # a browser's request headers take a few KB
# The page may load its own scripts, styles and images and the blob: URLs it makes, nothing else.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # no visitor's photo or result lingers in a cache
    "Cross-Origin-Resource-Policy": "same-origin",  # other sites' pages cannot embed the samples or results
}


class BadRequest(Exception):
    """A request the page explains to the visitor: `message` is shown there, `status` is the HTTP code,
    `retry_after` (seconds) is sent as Retry-After when the server is busy."""

    def __init__(self, message, status=400, retry_after=None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


# ---------------------------------------------------------------------------------------------
# Images in and out
# ---------------------------------------------------------------------------------------------
def read_body(stream, max_bytes):
    """The request body, in memory; 413 past max_bytes. Flask refuses a long Content-Length by itself,
    but not a chunked body, which has none (waitress cuts off both; a server of the user's may not)."""
    body = bytearray()
    while chunk := stream.read(1 << 20):
        body += chunk
        if len(body) > max_bytes:
            raise RequestEntityTooLarge()
    return bytes(body)


def check_upload_header(data, name, max_pixels):
    """Refuse, from the header alone, what the page does not offer or would be turned against the server:
    another format, too many pixels, a side longer than any photo's, a progressive JPEG with more scans
    than any camera writes. A header whose values are no numbers in range raises UserError (image_io.header_int:
    before they size anything), which upload_failures answers. Returns the header."""
    header = image_header(data, name)
    if header is None:
        raise BadRequest(UNREADABLE, 422)
    if header.format not in UPLOAD_FORMATS:
        raise BadRequest(
            f"{name}: this demo does not read {header.format} files. Upload a JPEG, PNG, BMP, TIFF or WebP photo.", 415
        )
    if header.width * header.height > max_pixels:
        raise BadRequest(
            f"{name}: {header.width}x{header.height} is {header.width * header.height / 1e6:.1f} megapixels; "
            f"this demo accepts up to {max_pixels / 1e6:g}. Send a smaller photo.",
            413,
        )
    if max(header.width, header.height) > MAX_SIDE:
        raise BadRequest(
            f"{name}: {header.width}x{header.height} has a side over {MAX_SIDE} pixels, more than any photo.", 413
        )
    # Every scan starts with an SOS marker, FF DA, and the coded data between markers never holds FF
    # unstuffed, so counting FF DA bounds the scans from above (an EXIF thumbnail's scan counts too).
    scans = data.count(b"\xff\xda") if header.format in ("JPEG", "MPO") else 0
    if scans > MAX_JPEG_SCANS:
        raise BadRequest(
            f"{name}: a JPEG of {scans} scans (cameras write at most about 10); "
            f"this demo decodes up to {MAX_JPEG_SCANS}.",
            413,
        )
    return header


def decode_upload(data, name, max_pixels):
    """Uploaded bytes -> the array Enhancer.enhance_array takes, decoded as test.py decodes files (EXIF
    orientation, alpha and 16 bits kept; the pixel limit checked from the header, before decoding; the first
    frame of a multi-frame image)."""
    return decode_image(data, name, max_pixels)[0]


@contextlib.contextmanager
def upload_failures(name, app):
    """Whatever goes wrong while an upload's header is read or it is decoded is the upload's fault: 422 with
    UNREADABLE (a BadRequest of our own passes as it is). The operator's log gets the input_failure line."""
    try:
        yield
    except BadRequest:
        raise
    except Exception as e:
        app.logger.warning("upload refused: %s", input_failure(name, e))
        raise BadRequest(UNREADABLE, 422) from None


def encode_png(image):
    return encode_image(image, ".png").tobytes()


def darken(rgb):
    """A well-exposed photo made a low-light one: gamma 2.2, then half the light (mean ~0.1, as in DICM)."""
    return np.round((rgb / 255.0) ** 2.2 * 0.5 * 255).astype(np.uint8)


def samples_folder(samples_dir):
    """--samples_dir as an absolute path: as given when absolute or found from the working directory, else
    relative to the project's folder (the default, data/test_data, from any working directory)."""
    folder = Path(samples_dir).expanduser()
    if folder.is_absolute() or folder.exists():
        return folder.resolve()
    return (REPO / folder).resolve()


SAME_PICTURE = 0.98  # correlation of 16x16 grey thumbnails: 0.997 for a photo darkened two ways, < 0.5 for others


def picture_signature(im):
    """(size, normalised 16x16 grey thumbnail): what same_picture compares."""
    grey = np.asarray(im.convert("L").resize((16, 16), Image.BILINEAR), np.float32).ravel()
    grey -= grey.mean()
    return im.size, grey / (np.linalg.norm(grey) or 1.0)


def same_picture(a, b):
    """Whether two signatures are one picture, whatever its exposure or encoding (a darker or re-encoded
    copy of a photo has the same size and a thumbnail that correlates with it)."""
    return a[0] == b[0] and float(a[1] @ b[1]) >= SAME_PICTURE


def collect_samples(samples_dir, log=print):
    """The page's samples as {id: (label, PNG bytes or a file's path, JPEG thumbnail)}: scikit-image's
    bundled photos made dark, then the first images of samples_dir (the user's own test data, if any) that
    are other pictures (the project's data/test_data holds the bundled photos too). A file that cannot be
    read is left out with a line. Thumbnails are made here, once: made per request, a 4K sample would cost
    a decode per page view."""
    samples, seen = {}, []
    for name in BUILTIN_SAMPLES:
        png = encode_png(darken(getattr(skimage.data, name)()))
        im = load_rgb(io.BytesIO(png))
        seen.append(picture_signature(im))
        samples[name] = (name, png, thumbnail_jpeg(im))
    for path in find_images(samples_folder(samples_dir)):
        if len(samples) == len(BUILTIN_SAMPLES) + MAX_FOLDER_SAMPLES:
            break
        try:
            im = load_rgb(path)
        except Exception as e:
            log(f"sample left out: {input_failure(path, e)}")
            continue
        signature = picture_signature(im)
        if not any(same_picture(signature, other) for other in seen):
            seen.append(signature)
            samples[f"file{len(samples) - len(BUILTIN_SAMPLES)}"] = (path.name, path, thumbnail_jpeg(im))
    return samples


def thumbnail_jpeg(im):
    im = im.copy()
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
    needed = height * width / scale**2
    if needed <= max_network_pixels:
        return
    fitting = [s for s in choices if height * width / s**2 <= max_network_pixels]
    advice = f"choose scale factor {fitting[0]} or more" if fitting else "downscale the photo first"
    raise BadRequest(
        f"At scale factor {scale} the network would run on {needed / 1e6:.1f} MP of this {width} x {height} "
        f"photo; this demo allows {max_network_pixels / 1e6:g} MP: {advice}.",
        413,
    )


def check_same_origin(headers, host):
    """Refuse POSTs that another site's page makes a visitor's browser send. The API is open to scripts
    and curl (no Origin header), but a page elsewhere could otherwise spend this server's CPU through every
    browser that visits it (a form or no-cors POST needs no CORS permission to be sent, only to be read).
    Browsers say where a request comes from in Sec-Fetch-Site (or, older ones, Origin)."""
    site, origin = headers.get("Sec-Fetch-Site"), headers.get("Origin")
    if site in ("same-site", "cross-site") or (site is None and origin and urlsplit(origin).netloc != host):
        raise BadRequest("Requests from other sites' pages are refused: open this demo's own page.", 403)


def is_loopback(host):
    """Whether a --host address (or name) is this machine's loopback."""
    if host in LOOPBACK_NAMES:
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def host_name(host_header):
    """A Host header's name without its port, lower case ('[::1]:7860' -> '::1')."""
    host = (host_header or "").strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def host_allowed(host_header, bound_host, allowed_hosts):
    """The Host allow-list (see the module's docstring)."""
    name = host_name(host_header)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if name in LOOPBACK_NAMES or name.endswith(".localhost") or (address and address.is_loopback):
        return True
    if "*" in allowed_hosts or name in allowed_hosts:
        return True
    return address is not None and not is_loopback(bound_host)


def allowed_host_names(text):
    return {name.strip().lower() for name in (text or "").split(",") if name.strip()}


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------
def megabytes(n):
    """n bytes in MB to 3 significant digits, without an exponent: 0.154, 16.8, 1020."""
    return f"{float(f'{n / 1e6:.3g}'):g}"


class Admission:
    """Work on uploads (decode, enhance, encode) runs only within two bounds shared by every request in
    flight: bytes of decoded images (known from the header, before decoding) and requests working at once.
    An upload that does not fit waits its turn in a short first-come queue; a full queue or a wait past
    QUEUE_TIMEOUT_S is answered 503 with Retry-After, so memory stays bounded however many arrive."""

    def __init__(self, budget_bytes, max_running, max_waiting, timeout_s=QUEUE_TIMEOUT_S):
        self.budget_bytes, self.max_running, self.max_waiting, self.timeout_s = (
            budget_bytes,
            max_running,
            max_waiting,
            timeout_s,
        )
        self.condition = threading.Condition()
        self.queue = collections.deque()
        self.used_bytes = self.running = 0

    def busy(self, why):
        return BadRequest(f"The server is busy ({why}); try again in {RETRY_AFTER_S} s.", 503, RETRY_AFTER_S)

    def fits(self, cost):
        return self.running < self.max_running and self.used_bytes + cost <= self.budget_bytes

    @contextlib.contextmanager
    def admit(self, cost):
        """A block of work that holds `cost` bytes of the budget."""
        if cost > self.budget_bytes:
            raise BadRequest(
                f"This photo needs {megabytes(cost)} MB once decoded; this demo works on at most "
                f"{megabytes(self.budget_bytes)} MB at a time. Send a smaller photo.",
                413,
            )
        with self.condition:
            if self.queue or not self.fits(cost):
                self.wait_turn(cost)
            self.running += 1
            self.used_bytes += cost
        try:
            yield
        finally:
            with self.condition:
                self.running -= 1
                self.used_bytes -= cost
                self.condition.notify_all()

    def wait_turn(self, cost):
        """Wait in the queue (the condition held) until `cost` fits and no one is ahead."""
        if len(self.queue) >= self.max_waiting:
            raise self.busy(f"{self.max_waiting} photos are already waiting")
        ticket = object()
        self.queue.append(ticket)
        try:
            admitted = self.condition.wait_for(lambda: self.queue[0] is ticket and self.fits(cost), self.timeout_s)
        finally:
            self.queue.remove(ticket)
            self.condition.notify_all()  # the next in line may fit now
        if not admitted:
            raise self.busy(f"no turn within {self.timeout_s:g} s")


class SerialEnhancer:
    """One Enhancer (weights loaded once, at start-up, so bad weights stop the server before the first
    visitor), one enhancement at a time: two big photos at once would double the peak memory, and one
    already keeps every core busy."""

    def __init__(self, args):
        self.enhancer = Enhancer(
            args.weight_dir, args.scale_factor, args.device, args.precision, weights_argument="--weight_dir"
        )
        self.lock = threading.Lock()

    def __call__(self, image, scale, strength):
        with self.lock:
            return self.enhancer.enhance_array(image, scale_factor=scale, strength=strength)


def create_app(args):
    """The Flask app; raises UserError for bad arguments (a bad weights file, fp16 on a CPU)."""
    enhancer = SerialEnhancer(args)
    admission = Admission(args.max_busy_mb * 1e6, args.max_running, args.max_waiting)
    samples = collect_samples(args.samples_dir, log=lambda line: print(line, file=sys.stderr))
    allowed_hosts = allowed_host_names(getattr(args, "allowed_hosts", ""))
    scales = tuple(sorted(set(SCALE_CHOICES) | {args.scale_factor}))
    max_upload_bytes = int(args.max_upload_mb * 1e6)
    max_pixels = args.max_mpix * 1e6
    app = Flask(__name__, template_folder=HERE / "templates", static_folder=HERE / "static")
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    app.config["SAMPLES"] = samples
    app.config["ADMISSION"] = admission

    @app.before_request
    def check_host():
        if not host_allowed(request.host, args.host, allowed_hosts):
            raise BadRequest("This server does not answer for that host name.", 421)

    def sample_entry(sample_id):
        if sample_id not in samples:
            raise BadRequest(f"There is no sample {sample_id!r}.", 404)
        return samples[sample_id]

    @app.get("/")
    def index():
        return render_template(
            "index.html",
            samples=[(i, label) for i, (label, *_) in samples.items()],
            scales=scales,
            default_scale=args.scale_factor,
            strength_range=STRENGTH_RANGE,
            max_upload_bytes=max_upload_bytes,
        )

    @app.get("/api/samples/<sample_id>")
    def sample(sample_id):
        source = sample_entry(sample_id)[1]
        if isinstance(source, Path):  # streamed from its file: a large sample costs no memory per request
            return send_file(source, mimetype=mimetypes.guess_type(source.name)[0] or "application/octet-stream")
        return Response(source, mimetype="image/png")

    @app.get("/api/samples/<sample_id>/thumbnail")
    def sample_thumbnail(sample_id):
        return Response(sample_entry(sample_id)[2], mimetype="image/jpeg")

    @app.post("/api/enhance")
    def enhance():
        """Body: the image file's bytes. Query: scale_factor, strength, name (the file's). Answer: the enhanced PNG.
        Everything that needs memory in proportion to the photo (decoding, enhancing, encoding) is admitted work."""
        check_same_origin(request.headers, request.host)
        scale = parse_scale(request.args.get("scale_factor", args.scale_factor), scales)
        strength = parse_strength(request.args.get("strength", 1.0))
        name = upload_name(request.args.get("name"))  # only for the messages
        data = read_body(request.stream, max_upload_bytes)
        if not data:
            raise BadRequest("No image received: choose a photo or a sample.")
        with upload_failures(name, app):
            header = check_upload_header(data, name, max_pixels)
        check_network_size((header.height, header.width), scale, scales, args.max_network_megapixels * 1e6)
        with admission.admit(header.decoded_bytes):
            with upload_failures(name, app):
                image = decode_upload(data, name, max_pixels)
            # The decoded photo is only the call's argument, so it is freed before the result is encoded.
            png = encode_png(enhancer(image, scale, strength))
            del image
        return Response(png, mimetype="image/png")

    @app.errorhandler(BadRequest)
    def bad_request(e):
        response = jsonify(error=str(e))
        if e.retry_after:
            response.headers["Retry-After"] = str(e.retry_after)
        return response, e.status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(e):
        return jsonify(
            error=f"The file is larger than the {args.max_upload_mb:g} MB this demo accepts; send a smaller one."
        ), 413

    @app.errorhandler(HTTPException)
    def http_error(e):
        return jsonify(error=f"{e.name}: {e.description}"), e.code

    @app.errorhandler(Exception)
    def server_error(e):
        app.logger.exception("enhancement failed")  # the traceback goes to the operator's terminal
        return jsonify(error=SERVER_FAULT), 500

    @app.after_request
    def add_security_headers(response):
        response.headers.update(SECURITY_HEADERS)
        return response

    return app


def upload_name(text):
    """The file name the page sends with an upload, for the messages only: its last component, 100
    characters at most (a path a script sends is not echoed)."""
    name = str(text or "upload").replace("\\", "/").rsplit("/", 1)[-1][:100]
    return name or "upload"


class SecureErrorTask(ErrorTask):
    """waitress's own error pages (a malformed request, headers too large, a body over the limit) with the
    app's security headers."""

    def execute(self):
        self.response_headers.extend(SECURITY_HEADERS.items())
        super().execute()


class SecureChannel(HTTPChannel):
    error_task_class = SecureErrorTask


def url_host(host):
    """The address to print for a browser: a wildcard address is reachable as localhost."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)


def listen(host, port):
    """A listening socket; waitress's own binding would end in a traceback on a busy port."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); choose another port with --port") from None


def wsgi_app(*argv):
    """The app for a WSGI server of your own, configured by the command line's options (the admission
    control comes with it; bounds on bodies, threads and connections are then that server's to set):
        waitress-serve --call demo.app:wsgi_app
        gunicorn 'demo.app:wsgi_app("--weight_dir", "weight/sgz.pth", "--allowed_hosts", "photos.example.org")'
    (--host is not where that server listens: give the names it is reached by with --allowed_hosts)."""
    return create_app(get_demo_parser().parse_args(argv))


def connection_limit(wanted=CONNECTION_LIMIT):
    """The connections waitress may hold open: each takes up to 3 file descriptors (the socket, and files
    for a large body and a large answer). Raises this process's soft limit where the hard one allows;
    on Windows (no `resource` module) waitress's own default stands."""
    try:
        import resource
    except ImportError:
        return 100
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 3 * wanted + 64
    if soft != resource.RLIM_INFINITY and soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return wanted if soft == resource.RLIM_INFINITY else min(wanted, (soft - 64) // 3)


def serve(app, sock, args):
    """waitress on `sock`: one thread reads and writes every connection, so idle or slow ones hold no
    thread, and a request reaches the app only once its whole body has arrived (a body past
    --max_upload_mb, chunked or not, is refused as it arrives)."""
    server = create_server(
        app,
        sockets=[sock],
        ident="SGZ demo",
        threads=args.max_running + args.max_waiting + LIGHT_THREADS,
        max_request_body_size=int(args.max_upload_mb * 1e6),
        connection_limit=connection_limit(),
        asyncore_use_poll=True,  # select() stops at 1024 descriptors
        channel_timeout=CHANNEL_TIMEOUT_S,
        cleanup_interval=CHANNEL_TIMEOUT_S / 3,
        inbuf_overflow=BUFFER_IN_MEMORY,
        outbuf_overflow=BUFFER_IN_MEMORY,
        max_request_header_size=MAX_HEADER_BYTES,
    )
    server.channel_class = SecureChannel  # one socket: create_server returns its one server
    return server


def main(args):
    app = create_app(args)
    sock = listen(args.host, args.port)
    server = serve(app, sock, args)
    folder_samples = sum(isinstance(source, Path) for _, source, _ in app.config["SAMPLES"].values())
    print(
        f"samples: {len(BUILTIN_SAMPLES)} built-in, {folder_samples} from {samples_folder(args.samples_dir)}",
        flush=True,
    )
    print(
        f"SGZ demo running: open http://{url_host(args.host)}:{sock.getsockname()[1]} in a browser (Ctrl+C stops it)",
        flush=True,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(run_script(main, get_demo_parser()))
