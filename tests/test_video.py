"""Video: demo/make_video.py and test_video.sh on small clips made here at run time with PyAV."""

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from conftest import ROOT, wait_until_paused

from model import EnhanceNet
from option import get_video_parser

sys.path.insert(0, str(ROOT / "demo"))
import make_video as mv  # noqa: E402

from runtime import PAUSE_VARIABLE, UserError

FPS = 24
AUDIO_RATE = 44100
BT709_FULL_RANGE = SimpleNamespace(colorspace=1, color_range=2, color_primaries=1, color_trc=1)


def clip_frame(i, width, height):
    """A dark frame: colour ramps across, brightness rising with i (so frame order is visible)."""
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = np.linspace(5, 90, width, dtype=np.uint8)[None]
    img[..., 1] = 15 + (4 * i) % 200
    img[..., 2] = np.linspace(10, 60, height, dtype=np.uint8)[:, None]
    return img


def make_clip(path, width=96, height=64, frames=12, audio=True, rotation=0, gaps=None, colour=None):
    """An H.264 MP4 (plus an AAC track): `gaps` (ms between frames, cycled) makes it variable-rate."""
    time_base = Fraction(1, 1000) if gaps else Fraction(1, FPS)
    with mv.video_writer(path) as out:
        video = mv.add_h264_stream(out, width, height, FPS, time_base, 18, "ultrafast", colour)
        video.set_display_rotation(rotation)
        if audio:
            sound = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        pts = 0
        for i in range(frames):
            out.mux(video.encode(mv.to_video_frame(clip_frame(i, width, height), video, pts, time_base)))
            pts += gaps[i % len(gaps)] if gaps else 1
        out.mux(video.encode(None))
        seconds = float(pts * time_base)
        for start in range(0, int(seconds * AUDIO_RATE), 1024) if audio else ():
            tone = 0.1 * np.sin(2 * np.pi * 440 * (start + np.arange(1024)) / AUDIO_RATE, dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = AUDIO_RATE, start
            out.mux(sound.encode(frame))
        if audio:
            out.mux(sound.encode(None))
    return Path(path)


def describe(path):
    """What must survive enhancement: geometry, frames with their times, duration, rate, audio bytes."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = list(c.decode(v))
        info = {
            "size": (v.codec_context.width, v.codec_context.height),
            "frames": len(frames),
            "times": [float(f.pts * f.time_base) for f in frames],
            "rotation": frames[0].rotation,
            "duration": float(v.duration * v.time_base),
            "rate": v.average_rate,
        }
    with av.open(str(path)) as c:  # demux() with no stream would read them all
        info["audio"] = [bytes(p) for p in c.demux(c.streams.audio) if p.dts is not None] if c.streams.audio else []
    return info


def decode_rgb(path):
    with av.open(str(path)) as c:
        return [mv.to_rgb(f) for f in c.decode(video=0)]


class Identity:
    """Stands in for the Enhancer where only the plumbing is under test."""

    def enhance_frame(self, image, map_filter=None, strength=1.0):
        return image.copy()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "sgz.pth"
    torch.manual_seed(0)
    torch.save(EnhanceNet().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def tester(weights):
    from enhance import Enhancer

    return Enhancer(str(weights), scale_factor=12, device="cpu")


def leftovers(folder, keep=()):
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in keep)


# ---------------------------------------------------------------------------------------------
# Enhancing keeps everything but the pixels
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("width,height,audio", [(96, 64, True), (97, 65, False)])
def test_enhanced_video_keeps_size_frames_timing_and_audio(tmp_path, tester, width, height, audio):
    src = make_clip(tmp_path / "in.mp4", width, height, audio=audio)
    summary = mv.enhance_video(tester, src, tmp_path / "out.mp4")
    before, after = describe(src), describe(tmp_path / "out.mp4")
    assert after == before  # size, frame count and times, duration, rate, audio packets byte for byte
    assert bool(before["audio"]) == audio and summary["audio"] == (["aac"] if audio else [])
    assert summary["frames"] == 12 and (summary["width"], summary["height"]) == (width, height)
    expected = [tester.enhance_array(f) for f in decode_rgb(src)]
    got = decode_rgb(tmp_path / "out.mp4")
    assert max(np.abs(g.astype(int) - e).mean() for g, e in zip(got, expected)) < 3  # codec loss only
    assert leftovers(tmp_path) == ["in.mp4", "out.mp4"]  # no frame files, no temporary file


def test_variable_frame_rate_timestamps_and_duration_survive(tmp_path):
    src = make_clip(tmp_path / "vfr.mp4", gaps=[30, 50, 70])
    mv.enhance_video(Identity(), src, tmp_path / "out.mp4")
    before, after = describe(src), describe(tmp_path / "out.mp4")
    assert np.diff(before["times"]).round(3).tolist()[:3] == [0.03, 0.05, 0.07]
    assert after == before


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_the_matrix_made_from_a_rotation_is_the_files_own(tmp_path, rotation):
    """Where PyAV cannot list a frame's side data, display_matrix builds the matrix from the frame's rotation:
    the same 9 numbers as the file's own."""
    with mv.VideoReader(make_clip(tmp_path / "rot.mp4", rotation=rotation, audio=False)) as reader:
        first = reader.first_frame()
        assert mv.rotation_matrix(first.rotation) == mv.display_matrix(first)


def test_rotation_is_carried_over(tmp_path):
    src = make_clip(tmp_path / "rot.mp4", rotation=90, audio=False)
    mv.enhance_video(Identity(), src, tmp_path / "out.mp4")
    after = describe(tmp_path / "out.mp4")
    assert after["rotation"] == 90 and after["size"] == (96, 64)


def test_colour_matrix_and_range_are_kept(tmp_path):
    """A BT.709 full-range clip comes back with its tags and colours (the encoder's default BT.601
    limited-range conversion would shift them by 20+ levels)."""
    src = make_clip(tmp_path / "709.mp4", audio=False, colour=BT709_FULL_RANGE)
    mv.enhance_video(Identity(), src, tmp_path / "out.mp4", crf=0)
    with av.open(str(tmp_path / "out.mp4")) as c:
        frame = next(c.decode(video=0))
        assert (frame.colorspace, frame.color_range) == (1, 2)
    assert max(np.abs(a.astype(int) - b).max() for a, b in zip(decode_rgb(src), decode_rgb(tmp_path / "out.mp4"))) <= 4


# ---------------------------------------------------------------------------------------------
# Temporal smoothing
# ---------------------------------------------------------------------------------------------
def test_curve_map_ema_averages_across_frames():
    ema = mv.CurveMapEMA(0.75)
    first = torch.full((1, 3, 2, 2), 0.4)
    assert torch.equal(ema(first), first)  # the first frame starts the average
    assert torch.allclose(ema(torch.full((1, 3, 2, 2), -0.4)), torch.full((1, 3, 2, 2), 0.2))
    assert torch.equal(first, torch.full((1, 3, 2, 2), 0.4))  # the caller's map is not changed


def test_temporal_smoothing_changes_later_frames_only(tmp_path, tester):
    class Recording:
        def __init__(self):
            self.outputs = []

        def enhance_frame(self, image, map_filter=None, strength=1.0):
            self.outputs.append(tester.enhance_frame(image, map_filter, strength))
            return self.outputs[-1]

    src = make_clip(tmp_path / "in.mp4", audio=False)
    plain, smooth = Recording(), Recording()
    plain_summary = mv.enhance_video(plain, src, tmp_path / "plain.mp4")
    smooth_summary = mv.enhance_video(smooth, src, tmp_path / "smooth.mp4", temporal_smoothing=0.8)
    assert np.array_equal(plain.outputs[0], smooth.outputs[0])
    assert not np.array_equal(plain.outputs[-1], smooth.outputs[-1])
    assert describe(tmp_path / "smooth.mp4")["times"] == describe(src)["times"]
    assert plain_summary["flicker_in"] == smooth_summary["flicker_in"] > 0


def test_flicker_is_mean_absolute_change_of_mean_brightness():
    meter = mv.FlickerMeter()
    for level in [10, 12, 11, 11]:
        frame = np.full((4, 6, 3), level, np.uint8)
        frame[0, 0] = (level + 6, level, level)  # one brighter pixel: 6/72 on the mean
        meter.add(frame)
    assert meter.value == pytest.approx(1.0)
    single = mv.FlickerMeter()
    single.add(np.zeros((2, 2, 3), np.uint8))
    assert single.value == 0.0


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error, nothing left under the output's name
# ---------------------------------------------------------------------------------------------
def truncated_clip(tmp_path):
    data = make_clip(tmp_path / "whole.mp4", frames=24).read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: len(data) // 2])
    return path


def not_a_video(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("these are not frames\n" * 50)
    return path


@pytest.mark.parametrize(
    "make_bad,message",
    [
        (lambda d: d / "missing.mp4", "video not found"),
        (not_a_video, "is not a readable video"),
        (truncated_clip, "damaged or truncated"),
    ],
)
def test_bad_input_raises_one_line_and_writes_nothing(tmp_path, make_bad, message):
    src = make_bad(tmp_path)
    with pytest.raises(UserError, match=message) as e:
        mv.enhance_video(Identity(), src, tmp_path / "out.mp4")
    assert "\n" not in str(e.value) and str(src) in str(e.value)
    assert not list(tmp_path.glob("*out*"))


def test_video_cut_mid_stream_is_reported_as_truncated(tmp_path):
    """With its index at the front (faststart) a cut file opens, then runs out of data."""
    plain, whole = make_clip(tmp_path / "plain.mp4", frames=24), tmp_path / "whole.mp4"
    with av.open(str(plain)) as i, av.open(str(whole), "w", options={"movflags": "faststart"}) as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for packet in i.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                o.mux(packet)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(UserError, match="damaged or truncated"):
        mv.enhance_video(Identity(), cut, tmp_path / "out.mp4")
    assert not list(tmp_path.glob("*out*"))


def test_failed_run_keeps_an_existing_output(tmp_path):
    old = tmp_path / "out.mp4"
    old.write_bytes(b"yesterday's result")
    with pytest.raises(UserError):
        mv.enhance_video(Identity(), not_a_video(tmp_path), old)
    assert old.read_bytes() == b"yesterday's result"
    assert leftovers(tmp_path) == ["notes.mp4", "out.mp4"]


def test_interrupted_run_leaves_no_file(tmp_path):
    class Interrupted:
        def enhance_frame(self, image, map_filter=None, strength=1.0):
            raise KeyboardInterrupt

    src = make_clip(tmp_path / "in.mp4")
    with pytest.raises(KeyboardInterrupt):
        mv.enhance_video(Interrupted(), src, tmp_path / "out.mp4")
    assert leftovers(tmp_path) == ["in.mp4"]


# ---------------------------------------------------------------------------------------------
# Reading ahead
# ---------------------------------------------------------------------------------------------
def test_the_reader_gives_the_decoders_items_in_order_within_its_budget(tmp_path):
    """The same audio packets and frames as decoding in this thread, in file order; however far the reader's thread
    has got, the frames waiting never exceed the budget by more than one frame."""
    src = make_clip(tmp_path / "in.mp4", frames=20)
    with av.open(str(src)) as inp:
        streams = [inp.streams.video[0], *inp.streams.audio]
        expected = [
            (item.stream.type if isinstance(item, av.Packet) else "video", item.pts)
            for item in mv.decoded(inp, src, streams)
        ]
    frame_bytes = 96 * 64 * 3 // 2
    with mv.VideoReader(src, max_bytes=3 * frame_bytes) as reader:
        seen = []
        for item in reader:
            assert reader.bytes <= 4 * frame_bytes
            seen.append((item.stream.type if isinstance(item, av.Packet) else "video", item.pts))
    assert seen == expected and not reader.thread.is_alive()


def test_frames_larger_than_the_limit_are_refused_in_one_line(tmp_path, monkeypatch):
    """A header that declares frames over MAX_FRAME_PIXELS (a damaged or forged file) is refused before any frame
    is decoded; so is a decoded frame over it that the header did not declare."""
    src = make_clip(tmp_path / "in.mp4")
    monkeypatch.setattr(mv, "MAX_FRAME_PIXELS", 96 * 64 - 1)
    with pytest.raises(UserError, match=r"in.mp4: its frames are 96x64 pixels, more than"):
        mv.VideoReader(src)
    with av.open(str(src)) as inp, pytest.raises(UserError, match="its frames are 96x64 pixels"):
        list(mv.decoded(inp, src, inp.streams.video[:1]))


def test_leaving_the_reader_early_stops_its_thread(tmp_path):
    src = make_clip(tmp_path / "in.mp4", frames=30)
    with mv.VideoReader(src, max_bytes=1) as reader:
        next(iter(reader))
    assert not reader.thread.is_alive()


def test_the_frames_workflow_never_imports_torch(tmp_path):
    """V2I and I2V only split and join frames: PyTorch (1.2 s to import) is loaded only to enhance."""
    src, frames = make_clip(tmp_path / "in.mp4", audio=False), tmp_path / "f"
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'demo')!r}]\n"
        "import make_video, option, runtime\n"
        f"argv = ['--choice', 'V2I', '--video_path', {str(src)!r}, '--image_lowlight_folder', {str(frames)!r}]\n"
        "assert runtime.run_script(make_video.main, option.get_video_parser(), argv) == 0\n"
        f"argv = ['--choice', 'I2V', '--image_folder', {str(frames)!r}, '--video_path', {str(src)!r}]\n"
        "assert runtime.run_script(make_video.main, option.get_video_parser(), argv) == 0\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split()[-1] == "False", done.stderr
    assert len(list(frames.iterdir())) == 12 and (tmp_path / "f.mp4").is_file()


# ---------------------------------------------------------------------------------------------
# The official frames workflow
# ---------------------------------------------------------------------------------------------
def test_v2i_writes_upright_numbered_frames_and_i2v_joins_them_in_numeric_order(tmp_path):
    src = make_clip(tmp_path / "in.mp4", rotation=90, audio=False)
    frames = tmp_path / "frames"
    assert mv.video_to_frames(src, mv.frame_path_pattern(frames)) == 12
    names = sorted(p.name for p in frames.iterdir())
    assert names == sorted(f"{i}.jpg" for i in range(12))
    from PIL import Image

    with Image.open(frames / "0.jpg") as im:
        assert im.size == (64, 96)  # turned upright: the display matrix said 90 degrees
    with pytest.raises(UserError, match="already holds images"):
        mv.video_to_frames(src, mv.frame_path_pattern(frames))

    args = get_video_parser().parse_args(
        [
            "--choice",
            "I2V",
            "--image_folder",
            str(frames),
            "--video_path",
            str(src),
            "--save_path",
            str(tmp_path / "joined.mp4"),
        ]
    )
    mv.main(args)
    joined = describe(tmp_path / "joined.mp4")
    assert joined["frames"] == 12 and joined["size"] == (64, 96) and joined["rate"] == FPS
    green = [f[..., 1].mean() for f in decode_rgb(tmp_path / "joined.mp4")]
    assert green == sorted(green)  # 10.jpg after 9.jpg: numeric order, not text order


def test_i2v_leaves_out_each_frame_it_cannot_use_and_names_it(tmp_path):
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (32, 32)).save(frames / "0.png")
    Image.new("RGB", (32, 30)).save(frames / "1.png")  # another size
    (frames / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))  # not decodable
    Image.new("RGB", (32, 32), (0, 90, 0)).save(frames / "3.png")
    failed = []
    assert mv.frames_to_video(frames, tmp_path / "out.mp4", 25, failed=failed) == 2
    assert describe(tmp_path / "out.mp4")["frames"] == 2
    assert len(failed) == 2 and "1.png" in failed[0] and "one size" in failed[0] and "2.png" in failed[1]
    assert all("\n" not in line and "Traceback" not in line for line in failed)


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------
def run_script(*args, env=None):
    return subprocess.run(
        ["bash", str(ROOT / "test_video.sh"), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_test_video_sh_enhances_a_clip_end_to_end(tmp_path, weights):
    src = make_clip(tmp_path / "in.mp4", 97, 65)
    result = run_script(src, tmp_path / "out.mp4", "--weight_dir", weights, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "frame/s" in result.stderr and "audio copied (aac)" in result.stdout
    assert describe(tmp_path / "out.mp4") == describe(src)


def test_test_video_sh_runs_the_official_frames_workflow_from_its_variables(tmp_path, weights):
    src = make_clip(tmp_path / "in.mp4", audio=False)
    env = {
        **os.environ,
        "video_path": str(src),
        "save_path": str(tmp_path / "out.mp4"),
        "image_lowlight_folder": str(tmp_path / "low"),
        "image_folder": str(tmp_path / "enhanced"),
    }
    result = run_script("--weight_dir", weights, "--device", "cpu", env=env)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "low").glob("*.jpg"))) == len(list((tmp_path / "enhanced").glob("*.jpg"))) == 12
    after = describe(tmp_path / "out.mp4")
    assert (after["frames"], after["size"], after["rate"]) == (12, (96, 64), FPS)


@pytest.mark.parametrize(
    "args,code,message",
    [((), 2, "usage: bash test_video.sh"), (("missing.mp4",), 2, "error: video not found: missing.mp4")],
)
def test_test_video_sh_fails_in_one_line(args, code, message):
    result = run_script(*args)
    assert result.returncode == code
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and message in result.stderr


def test_official_flags_parse():
    args = get_video_parser().parse_args(
        [
            "--video_path",
            "a.mp4",
            "--save_path",
            "b.mp4",
            "--choice",
            "V2I",
            "--image_lowlight_folder",
            "f",
            "--image_folder",
            "g",
        ]
    )
    assert (args.video_path, args.save_path, args.choice, args.image_lowlight_folder, args.image_folder) == (
        "a.mp4",
        "b.mp4",
        "V2I",
        "f",
        "g",
    )
    assert get_video_parser().parse_args([]).temporal_smoothing == 0.0  # off by default: the paper's output
    assert get_video_parser().parse_args(["--temporal_smoothing"]).temporal_smoothing == 0.8


# ---------------------------------------------------------------------------------------------
# Clips as phones and old cameras make them; outputs that must not destroy anything
# ---------------------------------------------------------------------------------------------
def make_ten_bit_hevc(path, frames=6, width=96, height=64):
    """A 10-bit HEVC clip tagged BT.2020 / HLG, as phones record HDR video."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(
            "libx265", rate=FPS, options={"crf": "20", "preset": "ultrafast", "x265-params": "log-level=error"}
        )
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p10le"
        cc = stream.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 9, 9, 18, 1  # BT.2020 nc, HLG, limited
        for i in range(frames):
            rgb = clip_frame(i, width, height).astype(np.uint16) * 257 + 100  # values 8 bits cannot hold
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb48le").reformat(
                format="yuv420p10le", dst_colorspace=9, dst_color_range=1
            )
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Path(path)


def test_ten_bit_hevc_comes_out_ten_bit_with_its_hdr_tags(tmp_path, tester):
    src = make_ten_bit_hevc(tmp_path / "hdr.mp4")
    summary = mv.enhance_video(tester, src, tmp_path / "out.mp4")
    assert summary["pix_fmt"] == "yuv420p10le" and summary["codec"] == mv.TEN_BIT_ENCODERS[0]
    assert summary["flicker_in"] < 255  # on the 0-255 scale of 8-bit clips
    with av.open(str(tmp_path / "out.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert cc.format.components[0].bits == 10
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (9, 9, 18, 1)
        frames = [f.to_ndarray(format="rgb48le") for f in c.decode(video=0)]
    with av.open(str(src)) as c:
        expected = [tester.enhance_array(f.to_ndarray(format="rgb48le")) for f in c.decode(video=0)]
    assert len(frames) == 6 and frames[0].dtype == np.uint16
    assert max(np.abs(g.astype(int) - e).mean() for g, e in zip(frames, expected)) < 3 * 257  # codec loss only
    assert len(np.unique(frames[0][..., 1] & 0xFF)) > 4  # low bits in use: not 8-bit values scaled up


def make_clip_with_audio_codec(path, audio_codec):
    """A clip in `path`'s container with audio in a codec that MP4 cannot hold (e.g. pcm_u8 from old cameras)."""
    with av.open(str(path), "w") as out:
        video = mv.add_h264_stream(out, 64, 48, FPS, Fraction(1, FPS), 18, "ultrafast")
        sound = out.add_stream(audio_codec, rate=8000, layout="mono")
        for i in range(12):
            out.mux(video.encode(mv.to_video_frame(clip_frame(i, 64, 48), video, i, Fraction(1, FPS))))
        out.mux(video.encode(None))
        for start in range(0, 4000, 400):
            tone = (128 + 60 * np.sin(2 * np.pi * 440 * (start + np.arange(400)) / 8000)).astype(np.uint8)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="u8", layout="mono")
            frame.sample_rate, frame.pts = 8000, start
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return Path(path)


def test_audio_the_container_refuses_is_reencoded_to_aac(tmp_path):
    src = make_clip_with_audio_codec(tmp_path / "camera.mov", "pcm_u8")
    summary = mv.enhance_video(Identity(), src, tmp_path / "out.mp4")
    assert summary["audio"] == ["aac"] and summary["audio_reencoded"] == ["pcm_u8"]
    with av.open(str(tmp_path / "out.mp4")) as c:
        audio = c.streams.audio[0]
        seconds = sum(f.samples for f in c.decode(audio)) / audio.codec_context.sample_rate
    assert audio.codec_context.name == "aac" and abs(seconds - 0.5) < 0.15  # the sound is there, all of it


def test_avi_frames_keep_their_times(tmp_path):
    """AVI stores frames in decoding order without presentation times: with B-frames FFmpeg's guesses
    start one frame late and run out of order."""
    src = tmp_path / "old.avi"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)  # with B-frames
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(clip_frame(i, 96, 64), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    mv.enhance_video(Identity(), src, tmp_path / "out.mp4")
    after = describe(tmp_path / "out.mp4")
    assert after["times"] == [i / FPS for i in range(12)] and after["duration"] == pytest.approx(12 / FPS)
    green = [f[..., 1].mean() for f in decode_rgb(tmp_path / "out.mp4")]
    assert green == sorted(green)  # frames in their order


def test_output_that_is_the_input_is_refused_and_the_original_kept(tmp_path, weights):
    src = make_clip(tmp_path / "v.mp4")
    original = src.read_bytes()
    (tmp_path / "link.mp4").symlink_to(src)
    for output in (src, tmp_path / "link.mp4", tmp_path / "." / "v.mp4"):
        result = run_script(src, output, "--weight_dir", weights, "--device", "cpu")
        assert result.returncode == 2 and "would replace the input video" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert src.read_bytes() == original and leftovers(tmp_path) == ["link.mp4", "v.mp4"]


def test_a_still_image_is_not_a_video(tmp_path):
    from PIL import Image

    Image.fromarray(clip_frame(0, 32, 24)).save(tmp_path / "photo.jpg")
    with pytest.raises(UserError, match="still image, not a video"):
        mv.enhance_video(Identity(), tmp_path / "photo.jpg", tmp_path / "out.mp4")
    assert leftovers(tmp_path) == ["photo.jpg"]


def test_frame_folders_with_percent_in_their_names(tmp_path):
    src = make_clip(tmp_path / "in.mp4", audio=False)
    folder = tmp_path / "50% darker"
    assert mv.frame_path_pattern(folder) == str(folder).replace("%", "%%") + "/%d.jpg"
    assert mv.frame_path_pattern(tmp_path / "f" / "%05d.png") == str(tmp_path / "f" / "%05d.png")
    assert mv.video_to_frames(src, mv.frame_path_pattern(folder)) == 12
    assert sorted(p.name for p in folder.iterdir())[:2] == ["0.jpg", "1.jpg"]


def test_stale_temporary_video_of_a_killed_run_is_removed(tmp_path):
    src = make_clip(tmp_path / "in.mp4", audio=False)
    stale = tmp_path / ".sgz-4194999-0badc0de.tmp.mp4"  # a SIGKILLed run's: no such process
    stale.write_bytes(b"\0" * 1000)
    mv.enhance_video(Identity(), src, tmp_path / "out.mp4")
    assert leftovers(tmp_path) == ["in.mp4", "out.mp4"]


def test_sigterm_and_ctrl_c_leave_no_temporary_file(tmp_path, weights):
    import signal

    src = make_clip(tmp_path / "long.mp4", 160, 120, frames=24, audio=False)
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "demo" / "make_video.py"),
                "--video_path",
                str(src),
                "--save_path",
                str(tmp_path / "out.mp4"),
                "--weight_dir",
                str(weights),
                "--device",
                "cpu",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, PAUSE_VARIABLE: "5"},  # the script waits for the signal after 5 frames
        )
        said = wait_until_paused(proc)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".sgz-")], said  # mid-write
        proc.send_signal(sig)
        err = said + proc.communicate(timeout=60)[1]
        assert proc.returncode == 130 and err.rstrip().endswith("interrupted") and "Traceback" not in err, err
        assert leftovers(tmp_path) == ["long.mp4"]


def test_strength_on_the_command_line(tmp_path, strong_weights, capsys):
    src = make_clip(tmp_path / "in.mp4", frames=4, audio=False)
    means = {}
    for strength in ("1.0", "0.5"):
        dst = tmp_path / f"out_{strength}.mp4"
        argv = ["--video_path", src, "--save_path", dst, "--weight_dir", strong_weights, "--device", "cpu"]
        mv.main(get_video_parser().parse_args([str(a) for a in [*argv, "--strength", strength]]))
        means[strength] = np.mean(decode_rgb(dst))
    assert "4 frames" in capsys.readouterr().out
    assert np.mean(decode_rgb(src)) < means["0.5"] < means["1.0"] - 2
    with pytest.raises(SystemExit):
        get_video_parser().parse_args(["--strength", "3"])


# ---------------------------------------------------------------------------------------------
# Output containers: .webm and .gif work with every frame, others are one line, dropped streams named
# ---------------------------------------------------------------------------------------------
def frame_times(path):
    with av.open(str(path)) as c:
        return [float(f.pts * f.time_base) for f in c.decode(video=0)]


def test_webm_output_is_vp9_and_opus_with_every_frame(tmp_path):
    src = make_clip(tmp_path / "in.mp4", 64, 48, frames=8)
    summary = mv.enhance_video(Identity(), src, tmp_path / "out.webm")
    assert summary["frames"] == 8 and summary["dropped"] == []
    assert summary["audio"] == ["libopus"] and summary["audio_reencoded"] == ["aac"]
    with av.open(str(tmp_path / "out.webm")) as c:
        assert c.format.name.startswith("matroska,webm")
        assert c.streams.video[0].codec_context.name == "vp9"
        assert c.streams.audio[0].codec_context.name == "opus"
    frames = decode_rgb(tmp_path / "out.webm")
    assert len(frames) == 8 and frames[0].shape == (48, 64, 3)
    assert frame_times(tmp_path / "out.webm") == pytest.approx(frame_times(src), abs=0.002)
    expected = [clip_frame(i, 64, 48) for i in range(8)]
    assert max(np.abs(f.astype(int) - e).mean() for f, e in zip(frames, expected, strict=True)) < 4


def test_gif_output_has_every_frame_with_its_timing_and_names_the_audio_it_drops(tmp_path):
    src = make_clip(tmp_path / "in.mp4", 63, 47, frames=8)  # odd sides, with sound
    summary = mv.enhance_video(Identity(), src, tmp_path / "out.gif")
    assert summary["frames"] == 8 and summary["audio"] == []
    assert summary["dropped"] == ["audio stream 1 (aac)"]
    with av.open(str(tmp_path / "out.gif")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (47, 63, 3)
    assert frame_times(tmp_path / "out.gif") == pytest.approx(frame_times(src), abs=0.011)  # GIF: 1/100 s
    expected = [clip_frame(i, 63, 47) for i in range(8)]
    assert max(np.abs(f.astype(int) - e).mean() for f, e in zip(frames, expected, strict=True)) < 4


def test_a_second_video_stream_is_named_as_dropped(tmp_path):
    time_base, path = Fraction(1, FPS), tmp_path / "two.mkv"
    with mv.video_writer(path) as out:
        streams = [mv.add_h264_stream(out, w, h, FPS, time_base, 18, "ultrafast") for w, h in ((64, 48), (32, 24))]
        for i in range(8):
            for s in streams:
                out.mux(s.encode(mv.to_video_frame(clip_frame(i, s.width, s.height), s, i, time_base)))
        for s in streams:
            out.mux(s.encode(None))
    summary = mv.enhance_video(Identity(), path, tmp_path / "out.mp4")
    assert summary["frames"] == 8 and summary["dropped"] == ["video stream 1 (h264)"]
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert [s.type for s in c.streams] == ["video"] and c.streams.video[0].codec_context.width == 64


@pytest.mark.parametrize("name", ["out.avi", "out.flv", "out"])
def test_other_containers_get_one_line_saying_what_works(tmp_path, weights, name):
    src = make_clip(tmp_path / "in.mp4", 64, 48, frames=2, audio=False)
    code, err = run_video_main(["--video_path", src, "--save_path", tmp_path / name, "--weight_dir", weights])
    assert code == 2 and len(err.splitlines()) == 1
    assert "not a video format this script writes; use .mp4, .mkv, .mov, .webm or .gif" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]


def run_video_main(argv):
    """demo/make_video.py's command line in this process: (exit status, stderr)."""
    import io
    from contextlib import redirect_stderr

    from runtime import run_script as run

    err = io.StringIO()
    with redirect_stderr(err):
        code = run(mv.main, get_video_parser(), [str(a) for a in [*argv, "--device", "cpu"]])
    return code, err.getvalue().strip()


def test_a_fifo_as_the_output_is_refused_and_stays_a_fifo(tmp_path, weights):
    src = make_clip(tmp_path / "in.mp4", 64, 48, frames=2, audio=False)
    fifo = tmp_path / "out.mp4"
    os.mkfifo(fifo)
    code, err = run_video_main(["--video_path", src, "--save_path", fifo, "--weight_dir", weights])
    assert (
        code == 2
        and err == f"error: cannot write {fifo}: it is a FIFO (named pipe); give the path of a new or regular file"
    )
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]
    result = run_script(src, fifo, "--weight_dir", weights, "--device", "cpu")  # the shell script, the same
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [err]
    assert fifo.is_fifo()
