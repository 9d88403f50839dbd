"""Enhance a low-light video with SGZ, or split / join frames for the official frames workflow.

    python demo/make_video.py --video_path night.mp4 --save_path night_sgz.mp4 [--temporal_smoothing]
    python demo/make_video.py --choice V2I --video_path night.mp4 --image_lowlight_folder frames
    python demo/make_video.py --choice I2V --image_folder enhanced --save_path night_sgz.mp4 --video_path night.mp4

Enhancing streams every frame from the decoder through the network to the encoder (PyAV: FFmpeg
inside its wheel), so nothing but the output goes to disk and memory stays constant however long
the clip. Each frame keeps its timestamp (variable frame rates and the duration survive), audio
packets are copied unchanged (re-encoded to AAC where the output's container cannot hold them), the
rotation and colour tags are carried over, and 10-bit (HDR) input stays 10-bit. The output is
written to a temporary file and renamed when complete; an output that is the input is refused.

Containment (runtime.input_failure): a video that cannot be decoded, enhanced or encoded is one line
naming it (SGZ_DEBUG=1 adds the traceback) and exit 1; in the frames workflow (I2V) each frame file is an
input of its own: one that cannot be read, or has another size than the first, is named in one line and
left out, the others make the video, and the run exits 1.
"""

import collections
import contextlib
import itertools
import math
import os
import re
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, from any working directory

import av
import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from image_io import find_images, load_rgb, write_image
from option import get_video_parser
from runtime import (
    EXIT_SOME_INPUTS_FAILED,
    UserError,
    atomic_output,
    available_cpus,
    check_output_folder,
    check_output_path,
    contained,
    exit_now,
    garbage_collection_paused,
    input_failure,
    interrupt_on_sigterm,
    pause_point,
    plural,
    remove_stale_temporaries,
    run_script,
    thread_limits,
)

FRAMES_IN_FLIGHT = 2  # frames being enhanced ahead of the encoder (each one a few MB at 1080p)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def open_video(path):
    """An input container with a video stream, or UserError saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"video not found: {path} (give an existing file, e.g. --video_path clip.mp4)")
    try:
        container = av.open(str(path))
    except Exception as e:  # FFmpeg's errors, and PyAV's own on what FFmpeg read (a tag that is not UTF-8)
        reason = getattr(e, "strerror", None) or f"{type(e).__name__}: {e}"
        raise UserError(
            f"{path} is not a readable video ({reason}): not a video file, or a damaged or truncated one"
        ) from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{path} holds no video stream; give a video file")
    if container.format.name == "image2" or container.format.name.endswith("_pipe"):  # FFmpeg reads a photo as
        container.close()  # a one-frame video
        raise UserError(f"{path} is a still image, not a video; enhance photos with test.py")
    codec = container.streams.video[0].codec_context
    if codec is None:  # a codec FFmpeg does not know
        container.close()
        raise UserError(f"{path}: its video is in a format FFmpeg cannot decode; re-encode it, e.g. to H.264")
    if codec.width * codec.height > MAX_FRAME_PIXELS:
        container.close()
        raise UserError(too_large(path, codec.width, codec.height))
    return container


# The largest frame this script takes: 8K video has 33 megapixels a frame; a header that declares more than twice
# that belongs to a damaged or forged file, whose frames would take GBs to decode and enhance.
MAX_FRAME_PIXELS = 8192 * 8192


def too_large(path, width, height):
    return (
        f"{path}: its frames are {width}x{height} pixels, more than the {MAX_FRAME_PIXELS / 1e6:.0f} megapixels "
        "this script enhances (8K video has 33); a damaged file, or scale it down first"
    )


def decoded(container, path, streams):
    """Audio packets and decoded video frames of `streams`, in file order. FFmpeg's errors become
    one UserError, and so does a video that stops before its header says it ends."""
    video, count, last_pts = container.streams.video[0], 0, None
    try:
        for packet in container.demux(*streams):
            if packet.stream.type == "video":
                for frame in packet.decode():
                    if frame.width * frame.height > MAX_FRAME_PIXELS:  # a size the header did not declare
                        raise UserError(too_large(path, frame.width, frame.height))
                    count, last_pts = count + 1, frame.pts
                    yield frame
            elif packet.dts is not None:  # demux ends each stream with an empty flush packet
                yield packet
    except av.error.FFmpegError as e:
        raise UserError(f"{path} is damaged or truncated ({e.strerror}); re-download or re-export it") from None
    if ends_early(video, count, last_pts):
        raise UserError(
            f"{path} is damaged or truncated: it stops after {count} of {video.frames} frames; "
            "re-download or re-export it"
        )


def ends_early(stream, count, last_pts):
    """A file cut at a packet boundary just ends, without an error. Fewer frames than the header
    counts is no proof alone (an edit list can hide frames of a complete file), so the last frame
    must also lie more than 1.5 frame intervals before the stream's end."""
    if not stream.frames or count >= stream.frames:
        return False
    if last_pts is None or not stream.duration:
        return True
    end = (stream.start_time or 0) + stream.duration
    return (end - last_pts) * stream.time_base > 1.5 / (stream.average_rate or stream.guessed_rate or 30)


# Decoded frames waiting for the network, at most (90 frames of 720p, 40 of 1080p, 10 of 4K, in 8-bit 4:2:0).
READ_AHEAD_BYTES = 128 << 20


class VideoReader:
    """A video opened, and its audio packets and video frames decoded in a thread of its own, in file order, up to
    READ_AHEAD_BYTES ahead of the loop that takes them. The script starts it before it imports PyTorch: PyTorch's
    import (1.2 s, holding the GIL) leaves the other core idle, and the first frames decode there meanwhile.

    Iterate it once: the items of `decoded` (audio packets and decoded video frames); an error of the decoder
    (its UserError: damaged, truncated) comes out of the iteration where it happened. Use it as a context
    manager: leaving stops the thread and closes the file."""

    def __init__(self, path, max_bytes=READ_AHEAD_BYTES):
        self.path, self.max_bytes = path, max_bytes
        self.container = open_video(path)
        self.items, self.bytes, self.stopped = collections.deque(), 0, False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self.read, name="sgz-video-reader", daemon=True)
        self.thread.start()

    def read(self):
        container = self.container
        try:
            for item in decoded(container, self.path, [*container.streams.video[:1], *container.streams.audio]):
                self.put(item, sum(p.buffer_size for p in item.planes) if isinstance(item, av.VideoFrame) else 0)
                if self.stopped:
                    return
            self.put(StopIteration(), 0)
        except BaseException as e:  # the consumer raises it
            self.put(e, 0)

    def first_frame(self):
        """The first video frame, once decoded, left for the iteration: its side data says how the video is
        rotated, which the output's header must repeat before anything is written."""
        with self.changed:
            while True:
                for item, _ in self.items:
                    if isinstance(item, av.VideoFrame):
                        return item
                    if isinstance(item, StopIteration):
                        raise UserError(f"{self.path} holds no decodable video frame; give a video file")
                    if isinstance(item, BaseException):
                        raise item
                self.changed.wait()

    def put(self, item, size):
        with self.changed:
            while self.bytes > self.max_bytes and not self.stopped:  # one item may overrun the budget
                self.changed.wait()
            self.items.append((item, size))
            self.bytes += size
            self.changed.notify_all()

    def __iter__(self):
        while True:
            with self.changed:
                while not self.items:
                    self.changed.wait()
                item, size = self.items.popleft()
                self.bytes -= size
                self.changed.notify_all()
            if isinstance(item, StopIteration):
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with self.changed:
            self.stopped = True
            self.changed.notify_all()
        self.thread.join()
        self.items.clear()  # frames not taken: freed now, not when a decoder error's traceback is collected
        self.container.close()


def display_matrix(frame):
    """The frame's display matrix (rotation, flips) as FFmpeg's 9 ints, or None. Where PyAV cannot list the
    frame's side data (one of a type it does not know), the matrix of the frame's rotation (a flip is lost)."""
    try:
        side_data = frame.side_data.get("DISPLAYMATRIX")
    except ValueError:
        return rotation_matrix(frame.rotation) if frame.rotation else None
    return None if side_data is None else np.frombuffer(bytes(side_data), dtype=np.int32).tolist()


def rotation_matrix(degrees):
    """The display matrix of a rotation by `degrees` as VideoFrame.rotation reports it (16.16 fixed point, as
    FFmpeg's av_display_rotation_set writes it)."""
    radians = math.radians(degrees)
    cos, sin = round(math.cos(radians) * (1 << 16)), round(math.sin(radians) * (1 << 16))
    return [cos, -sin, 0, sin, cos, 0, 0, 0, 1 << 30]


def is_deep(frame):
    """Whether the frame has more than 8 bits a sample (10-bit HEVC from phones, HDR)."""
    return frame.format.components[0].bits > 8


# FFmpeg's scaler splits each conversion over threads of its own by default; beside the encoder's threads and
# the network, which keep every core busy, one thread a conversion takes 25% less CPU time.
SCALER_THREADS = 1


def to_rgb(frame, deep=False, source="the video"):
    """(H, W, 3) RGB, uint8 or (deep) uint16, converted with the frame's own matrix and range (BT.709, full
    range, BT.2020, ...). A frame FFmpeg's scaler cannot convert is a UserError naming `source`."""
    try:
        return frame.to_ndarray(format="rgb48le" if deep else "rgb24", threads=SCALER_THREADS)
    except av.error.FFmpegError as e:
        raise UserError(
            f"{source}: its frames ({frame.format.name}, {frame.width}x{frame.height}) cannot be converted to RGB "
            f"({e.strerror}); re-encode it, e.g. to H.264"
        ) from None


def upright(rgb, frame):
    """Pixels turned the way a player shows them, for frame files (images carry no display matrix)."""
    return np.ascontiguousarray(np.rot90(rgb, k=round(frame.rotation / 90)))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
# 10-bit video: HEVC Main 10 (what phones record and HDR players expect), else H.264 High 10.
TEN_BIT_ENCODERS = [name for name in ("libx265", "libx264") if name in av.codecs_available]


def add_h264_stream(container, width, height, rate, time_base, crf, preset, colour=None, deep=False):
    """A libx264 stream, or for `deep` (10-bit) input a 10-bit one (TEN_BIT_ENCODERS). 4:2:0 needs even
    sides; odd sizes use 4:4:4 so the output keeps the input's exact width and height. `colour`: a codec
    context or frame whose tags to repeat (BT.2020 and the HDR transfer curves included)."""
    codec = TEN_BIT_ENCODERS[0] if deep and TEN_BIT_ENCODERS else "libx264"
    options = {"crf": str(crf), "preset": preset}
    if codec == "libx265":
        options["x265-params"] = "log-level=error"  # x265 prints its settings otherwise
    stream = container.add_stream(codec, rate=rate, options=options)
    stream.width, stream.height = width, height
    chroma = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    stream.pix_fmt = chroma + ("10le" if deep and TEN_BIT_ENCODERS else "")
    stream.codec_context.time_base = stream.time_base = time_base
    if colour is not None:
        for tag in ("colorspace", "color_range", "color_primaries", "color_trc"):
            setattr(stream.codec_context, tag, getattr(colour, tag))
    return stream


def to_video_frame(rgb, stream, pts, time_base):
    """An RGB array as a frame in the stream's pixel format, converted with the matrix and range
    the stream is tagged with (so a BT.709 input comes back BT.709)."""
    cc = stream.codec_context
    if cc.pix_fmt == "pal8":  # GIF: FFmpeg's scaler cannot make palettes
        return to_gif_frame(rgb, pts, time_base)
    # from_numpy_buffer wraps the array's memory, where from_ndarray would first copy it row by row (2.4 ms
    # a 720p frame, twice the conversion itself); reformat then writes a new frame in the stream's format.
    rgb = np.ascontiguousarray(rgb)
    frame = av.VideoFrame.from_numpy_buffer(rgb, format="rgb48le" if rgb.dtype == np.uint16 else "rgb24").reformat(
        format=cc.pix_fmt, dst_colorspace=cc.colorspace, dst_color_range=cc.color_range, threads=SCALER_THREADS
    )
    frame.pts, frame.time_base = pts, time_base
    return frame


# The containers this script writes, by extension, and the codecs their streams get.
OUTPUT_FORMATS = {
    ".mp4": "H.264 + AAC",
    ".m4v": "H.264 + AAC",
    ".mkv": "H.264 + the input's audio",
    ".mov": "H.264 + AAC",
    ".webm": "VP9 + Opus",
    ".gif": "an animated GIF, no sound",
}
OUTPUT_LIST = ".mp4, .mkv, .mov, .webm or .gif"
# Audio codecs for each container when the input's cannot be copied into it.
AUDIO_FALLBACK = {".webm": "libopus"}
# --preset (x264's names) as libvpx-vp9's speed, 0 (slowest) to 8.
VP9_SPEED = {"ultrafast": 8, "superfast": 7, "veryfast": 6, "faster": 5, "fast": 4, "medium": 3, "slow": 2}


def output_kind(path):
    """The extension of a video output, if this script writes it; else one UserError saying what works."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise UserError(
            f"cannot write {path}: '{suffix or 'no extension'}' is not a video format this script writes; "
            f"use {OUTPUT_LIST}"
        )
    return suffix


def add_video_stream(container, path, width, height, rate, time_base, crf, preset, colour=None, deep=False):
    """The video stream for the container of `path`: VP9 in .webm, a palette GIF in .gif, else H.264
    (add_h264_stream)."""
    kind = output_kind(path)
    if kind == ".gif":
        return add_gif_stream(container, width, height, rate, time_base)
    if kind == ".webm":
        return add_vp9_stream(container, width, height, rate, time_base, crf, preset, colour)
    return add_h264_stream(container, width, height, rate, time_base, crf, preset, colour, deep)


def add_vp9_stream(container, width, height, rate, time_base, crf, preset, colour=None):
    """A libvpx-vp9 stream in constant quality: --crf (x264's 0-51 scale) mapped onto VP9's 0-63, --preset
    onto its speed. 8 bits a sample, 10-bit input too (the libvpx in PyAV's wheels is built without high bit
    depth: for 10 bits write .mp4 or .mkv); odd sides use 4:4:4 (VP9 profile 1), as add_h264_stream."""
    options = {
        "crf": str(round(crf * 63 / 51)),
        "b": "0",  # constant quality, no bitrate target
        "deadline": "good",
        "cpu-used": str(VP9_SPEED.get(preset, 1)),
        "row-mt": "1",
    }
    stream = container.add_stream("libvpx-vp9", rate=rate, options=options)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    stream.codec_context.time_base = stream.time_base = time_base
    if colour is not None:
        for tag in ("colorspace", "color_range", "color_primaries", "color_trc"):
            setattr(stream.codec_context, tag, getattr(colour, tag))
    return stream


def add_gif_stream(container, width, height, rate, time_base):
    """An animated GIF stream: each frame with its own 256-colour palette (see to_gif_frame)."""
    stream = container.add_stream("gif", rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "pal8"
    stream.codec_context.time_base = stream.time_base = time_base
    return stream


def to_gif_frame(rgb, pts, time_base):
    """An RGB array (8 or 16 bits) as a palette frame: Pillow's median-cut palette of this frame, with
    Floyd-Steinberg dithering (far closer than FFmpeg's fixed 3-3-2 colours)."""
    if rgb.dtype == np.uint16:
        rgb = (rgb >> 8).astype(np.uint8)
    quantized = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    colours = np.zeros((256, 4), np.uint8)
    colours[:, 0] = 255  # PyAV takes the palette as ARGB
    used = np.array(quantized.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
    colours[: len(used), 1:] = used
    frame = av.VideoFrame.from_ndarray((np.asarray(quantized), colours), format="pal8")
    frame.pts, frame.time_base = pts, time_base
    return frame


def describe_stream(stream):
    codec = stream.codec_context.name if stream.codec_context is not None else "unknown codec"
    what = f"{stream.type} stream {stream.index} ({codec}"
    if stream.disposition & av.stream.Disposition.attached_pic:
        what += ", cover picture"
    return what + ")"


def dropped_streams(container, keep_audio):
    """Descriptions of the input's streams that the output leaves out: every video stream but the first
    (other angles, cover pictures), subtitles, data and attachments, and audio where `keep_audio` is false."""
    video = container.streams.video[0]
    return [describe_stream(s) for s in container.streams if s is not video and not (s.type == "audio" and keep_audio)]


@contextlib.contextmanager
def video_writer(path):
    """An output container on a temporary file beside `path`, renamed to `path` when the block
    completes and removed if it fails; FFmpeg's errors become one UserError naming the output. Temporary
    files that killed runs left beside it are removed first."""
    output_kind(path)
    remove_stale_temporaries([Path(path).parent])
    with atomic_output(path) as tmp:
        try:
            container = av.open(str(tmp), "w")
        except ValueError:  # FFmpeg guesses the format from the extension
            raise UserError(f"cannot write {path}: FFmpeg has no format for it; use {OUTPUT_LIST}") from None
        try:
            with container:
                yield container
        except av.error.FFmpegError as e:
            raise UserError(f"cannot write {path} ({e.strerror}); try another extension ({OUTPUT_LIST})") from None


# ---------------------------------------------------------------------------------------------
# Enhancing
# ---------------------------------------------------------------------------------------------
class CurveMapEMA:
    """A map_filter for Enhancer.enhance_array: exponential moving average of the low-res curve map
    across frames, m_t = alpha * m_{t-1} + (1 - alpha) * r_t, so the curve cannot jump from frame
    to frame. One instance per video (the first frame starts the average)."""

    def __init__(self, alpha):
        self.alpha, self.state = alpha, None

    def __call__(self, curve_map):  # (1, 3, h, w)
        if self.state is None:
            self.state = curve_map.clone()
        else:
            self.state.mul_(self.alpha).add_(curve_map, alpha=1 - self.alpha)
        return self.state


class FlickerMeter:
    """Flicker of a frame sequence: the mean absolute frame-to-frame change of mean brightness (0-255),
    kept as running sums so that a long clip needs no per-frame list."""

    def __init__(self):
        self.previous, self.total, self.changes = None, 0.0, 0

    def add(self, rgb):
        brightness = sum(cv2.mean(rgb)[:3]) / 3 / (257 if rgb.dtype == np.uint16 else 1)  # 6x faster than numpy's
        if self.previous is not None:
            self.total += abs(brightness - self.previous)
            self.changes += 1
        self.previous = brightness

    @property
    def value(self):
        return self.total / self.changes if self.changes else 0.0


def add_audio_stream(container, template, path):
    """A copy of the input's audio stream where the output's container holds its codec, else one of the
    container's own (AUDIO_FALLBACK: Opus in .webm, else AAC; the packets then need re-encoding: see
    audio_packets)."""
    if template.codec_context.name in container.supported_codecs:
        return container.add_stream_from_template(template)
    codec = AUDIO_FALLBACK.get(output_kind(path), "aac")
    rate = 48000 if codec == "libopus" else template.codec_context.sample_rate  # Opus: 48 kHz (resampled)
    layout = template.codec_context.layout
    if codec == "libopus" and layout.nb_channels > 2:
        layout = "stereo"
    return container.add_stream(codec, rate=rate, layout=layout)


def audio_packets(packet, stream, reencode):
    """The packets to mux for an input audio packet: itself, or (reencode) its sound encoded into `stream`."""
    if not reencode:
        packet.stream = stream
        return [packet]
    return [out for frame in packet.decode() for out in stream.encode(frame)]


def enhance_video(enhancer, src, dst, temporal_smoothing=0.0, crf=18, preset="medium", strength=1.0):
    """Enhance `src` (a path, or a VideoReader started on one) into `dst` frame by frame with `enhancer` (an
    enhance.Enhancer). Returns a summary: frames, size, audio codecs, and the flicker of the input and the output.

    Frames are decoded in the reader's thread and enhanced in a worker thread, FRAMES_IN_FLIGHT ahead of the
    encoder, so that the network runs while this thread encodes the frames around it (each of these releases
    the GIL); the encoder alone keeps a 2-core machine only half busy."""
    map_filter = CurveMapEMA(temporal_smoothing) if temporal_smoothing > 0 else None  # one worker: frames in order
    flicker_in, flicker_out = FlickerMeter(), FlickerMeter()
    frames = last_pts = 0
    # The network gets half the cores, the encoder's own threads the rest (see thread_limits).
    with (
        src if isinstance(src, VideoReader) else VideoReader(src) as reader,
        video_writer(dst) as out,
        ThreadPoolExecutor(1) as worker,
        thread_limits(torch_threads=max(1, available_cpus() // 2), opencv_threads=0),
    ):
        path, first = reader.path, reader.first_frame()
        matrix, deep = display_matrix(first), is_deep(first)
        inp = reader.container
        vin = inp.streams.video[0]
        rate = vin.average_rate or vin.guessed_rate or 30
        numbered, next_pts = inp.format.name == "avi", vin.start_time or 0
        vout = add_video_stream(
            out,
            dst,
            vin.codec_context.width,
            vin.codec_context.height,
            rate,
            vin.time_base,
            crf,
            preset,
            vin.codec_context,
            deep,
        )
        vout.set_display_matrix(matrix)
        sound = [] if output_kind(dst) == ".gif" else list(inp.streams.audio)
        dropped = dropped_streams(inp, keep_audio=bool(sound))
        audio = {a.index: add_audio_stream(out, a, dst) for a in sound}
        reencoded = {
            a.index: a.codec_context.name for a in sound if audio[a.index].codec_context.name != a.codec_context.name
        }
        in_flight = collections.deque()  # (input RGB, pts, future of the enhanced RGB), in display order
        with tqdm(total=vin.frames or None, unit="frame", desc=Path(path).name, dynamic_ncols=True) as bar:

            def encode_oldest():
                pause_point()
                rgb, pts, enhanced = in_flight.popleft()
                enhanced = enhanced.result()
                flicker_in.add(rgb)
                flicker_out.add(enhanced)
                out.mux(vout.encode(to_video_frame(enhanced, vout, pts, vin.time_base)))
                bar.update()

            for item in reader:
                if isinstance(item, av.Packet):
                    if item.stream.index in audio:  # not for a GIF
                        out.mux(audio_packets(item, audio[item.stream.index], item.stream.index in reencoded))
                    continue
                rgb = to_rgb(item, deep, path)
                # Raw streams (.h264) carry no timestamps, and AVI none FFmpeg can rely on (it stores frames in
                # decoding order; with B-frames its guesses come one frame late and out of order): such
                # frames follow each other, from the stream's start.
                last_pts = item.pts if item.pts is not None and not numbered else next_pts
                next_pts = last_pts + (item.duration or round(1 / (rate * vin.time_base)))
                in_flight.append(
                    (
                        rgb,
                        last_pts,
                        worker.submit(enhancer.enhance_frame, rgb, strength=strength, map_filter=map_filter),
                    )
                )
                frames += 1
                if len(in_flight) > FRAMES_IN_FLIGHT:
                    encode_oldest()
            while in_flight:
                encode_oldest()
        tail = vout.encode(None)
        if tail and vin.duration:  # the last frame lasts as long as in the input (else the muxer guesses 1/fps)
            tail[-1].duration = (vin.start_time or 0) + vin.duration - last_pts
        out.mux(tail)
        for index in reencoded:
            out.mux(audio[index].encode(None))
    return {
        "frames": frames,
        "width": vout.width,
        "height": vout.height,
        "codec": vout.codec_context.name,
        "pix_fmt": vout.pix_fmt,
        "audio": [a.codec_context.name for a in audio.values()],
        "audio_reencoded": list(reencoded.values()),
        "flicker_in": flicker_in.value,
        "flicker_out": flicker_out.value,
        "dropped": dropped,
    }


# ---------------------------------------------------------------------------------------------
# The official frames workflow
# ---------------------------------------------------------------------------------------------
def frame_path_pattern(folder):
    """'frames' -> 'frames/%d.jpg' (the official names); a printf pattern with one number ('frames/%05d.png')
    is used as it is; any other '%' is part of a name ('50% dark')."""
    text = str(folder)
    if re.fullmatch(r"[^%]*%0?\d*d[^%]*", text):
        return text
    return str(Path(text.replace("%", "%%")) / "%d.jpg")


def video_to_frames(src, pattern):
    """Every frame of `src`, upright, as pattern % 0, pattern % 1, ... Returns the frame count.
    A folder that already holds images is refused: old frames would be overwritten, or joined later."""
    folder = check_output_folder(Path(pattern % 0).parent)
    if folder.is_dir() and find_images(folder):
        raise UserError(f"{folder} already holds images; give an empty or new folder for the frames")
    count = 0
    with open_video(src) as inp:
        vin = inp.streams.video[0]
        for frame in tqdm(decoded(inp, src, [vin]), total=vin.frames or None, unit="frame", desc="V2I"):
            write_image(pattern % count, upright(to_rgb(frame, source=src), frame))
            count += 1
    return count


def numeric_order(path):
    """Sort key that puts 2.jpg before 10.jpg (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def video_frame_rate(path):
    with open_video(path) as inp:
        vin = inp.streams.video[0]
        return vin.average_rate or vin.guessed_rate


def readable_frames(paths, failed):
    """The frames of `paths` that can be read, as (path, RGB array), lazily; each that cannot is a line
    appended to `failed` (and printed), as is each of another size than the first readable one."""

    def report(line):
        failed.append(line)
        tqdm.write(f"error: {line}", file=sys.stderr)

    size = None
    for path in paths:
        rgb = None
        with contained(path, report):
            rgb = np.asarray(load_rgb(path))
            size = size or rgb.shape[:2]
            if rgb.shape[:2] != size:
                raise UserError(
                    f"{path} is {rgb.shape[1]}x{rgb.shape[0]}, the other frames {size[1]}x{size[0]}; "
                    "all frames of a video must have one size: left out"
                )
        if rgb is not None and rgb.shape[:2] == size:
            yield path, rgb


def frames_to_video(folder, dst, fps, crf=18, preset="medium", failed=None):
    """Join the images under `folder` (sorted numerically) into a video at `fps`. Returns the count of
    frames written; a frame file that cannot be used is left out, its line appended to `failed`."""
    paths = sorted(find_images(folder), key=numeric_order)
    if not paths:
        raise UserError(f"no frames found in {folder}; give the folder of images with --image_folder")
    failed = [] if failed is None else failed
    rate = Fraction(fps).limit_denominator(1001)
    frames = readable_frames(tqdm(paths, unit="frame", desc="I2V"), failed)
    first = next(frames, None)
    if first is None:
        raise UserError(f"none of the {len(paths)} frames in {folder} could be read; see the lines above")
    height, width = first[1].shape[:2]
    count = 0
    with video_writer(dst) as out:
        stream = add_video_stream(out, dst, width, height, rate, 1 / rate, crf, preset)
        for _, rgb in itertools.chain([first], frames):
            out.mux(stream.encode(to_video_frame(rgb, stream, count, 1 / rate)))
            count += 1
        out.mux(stream.encode(None))
    return count


def refuse_same_file(src, dst):
    """An output that is its input (also through links) would destroy the original: refused."""
    src, dst = Path(src), Path(dst)
    if dst.resolve() == src.resolve() or (dst.exists() and src.exists() and os.path.samefile(src, dst)):
        raise UserError(f"writing {dst} would replace the input video {src}; choose another output (--save_path)")


def main(args):
    """Run the --choice; a failure of the input video (anything but a UserError, which run_script reports)
    is its one line and exit 1."""
    interrupt_on_sigterm()
    try:
        return run_choice(args)
    except UserError:
        raise
    except Exception as e:
        print(
            f"error: {input_failure(args.video_path if args.choice != 'I2V' else args.image_folder, e)}",
            file=sys.stderr,
        )
        return EXIT_SOME_INPUTS_FAILED


def load_enhancer(args):
    """The command line's Enhancer. PyTorch is imported here, not at the top: V2I and I2V never need it, and an
    enhancing run decodes its first frames while it loads (VideoReader)."""
    with garbage_collection_paused():  # PyTorch's 300,000 objects: see runtime.pause_garbage_collection
        from enhance import Enhancer

        return Enhancer(
            args.weight_dir, args.scale_factor, args.device, args.precision, weights_argument="--weight_dir"
        )


def run_choice(args):
    if args.choice == "V2I":
        count = video_to_frames(args.video_path, frame_path_pattern(args.image_lowlight_folder))
        print(f"wrote {plural(count, 'frame')} to {args.image_lowlight_folder}")
    elif args.choice == "I2V":
        fps = args.fps or (video_frame_rate(args.video_path) if Path(args.video_path).is_file() else 30)
        dst = args.save_path or str(Path(args.image_folder)) + ".mp4"
        if Path(args.video_path).is_file():
            refuse_same_file(args.video_path, dst)
        output_kind(dst)
        check_output_path(dst)
        failed = []
        count = frames_to_video(args.image_folder, dst, fps, args.crf, args.preset, failed)
        print(f"wrote {dst}: {plural(count, 'frame')} at {float(fps):g} fps")
        if failed:
            print(f"error: {plural(len(failed), 'frame file')} left out (named above)", file=sys.stderr)
            return EXIT_SOME_INPUTS_FAILED
    else:
        dst = args.save_path or str(Path(args.video_path).with_name(Path(args.video_path).stem + "_enhanced.mp4"))
        refuse_same_file(args.video_path, dst)
        output_kind(dst)  # a format this script cannot write, a FIFO, device or folder: refused before any work
        check_output_path(dst)
        with VideoReader(args.video_path) as reader:  # a bad video fails before the network loads
            enhancer = load_enhancer(args)  # while the reader decodes the first frames
            s = enhance_video(enhancer, reader, dst, args.temporal_smoothing, args.crf, args.preset, args.strength)
        audio = f"audio copied ({', '.join(s['audio'])})" if s["audio"] else "no audio"
        if s["audio_reencoded"]:
            audio += f", {', '.join(s['audio_reencoded'])} re-encoded (the container cannot hold it)"
        if s["dropped"]:
            print(f"note: {dst} leaves out the input's {', '.join(s['dropped'])}", file=sys.stderr)
        print(
            f"wrote {dst}: {plural(s['frames'], 'frame')}, {s['width']}x{s['height']} {s['codec']} "
            f"{s['pix_fmt']}, {audio}; "
            f"flicker (mean |change| of "
            f"brightness frame to frame): input {s['flicker_in']:.3f}, output {s['flicker_out']:.3f}"
        )


if __name__ == "__main__":
    exit_now(run_script(main, get_video_parser()))
