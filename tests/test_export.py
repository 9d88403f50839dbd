"""export.py: the ONNX graph computes model.EnhanceNet at every size, in ONNX Runtime and OpenCV's DNN module,
reproduces test.py's output (enhance.Enhancer) on photos, and fails in one line on a user's mistake."""

import cv2
import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, dark_image, max_abs_diff

import export
import image_io
import model
from enhance import Enhancer
from option import get_export_parser
from runtime import run_script

SHIPPED = ROOT / "weight" / "sgz.pth"
# Odd sizes, sizes where H / 12 is a rounding tie (18 -> 2, 30 -> 2, 42 -> 4: half to even), and 1 x 1.
SIZES = [(18, 30), (30, 42), (97, 131), (13, 7), (1, 1)]


def run_export(*argv):
    return run_script(export.main, get_export_parser(), [str(a) for a in argv])


@pytest.fixture(scope="module")
def strong_onnx(strong_weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "strong.onnx"
    assert run_export("--weight_dir", strong_weights, "--output", path) == 0
    return path


@pytest.fixture(scope="module")
def shipped_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "sgz.onnx"
    assert run_export("--weight_dir", SHIPPED, "--output", path) == 0
    return path


@pytest.fixture(scope="module")
def enhancer():
    return Enhancer(SHIPPED, device="cpu")


@torch.inference_mode()
def pytorch_reference(weights, x, scale_factor=12):
    return model.load_enhance_net(weights, scale_factor=scale_factor).eval()(torch.from_numpy(x))[0].numpy()


def random_batch(size, batch=2, seed=0):
    return np.random.default_rng(seed).random((batch, 3, *size), dtype=np.float32)


def test_downscaled_side_is_model_downscaled_size():
    n = torch.arange(1, 5000)
    for s in (1, 2, 3, 4, 5, 7, 8, 12, 16, 25):
        expected = [model.downscaled_size(int(i), 1, s)[0] for i in n]
        assert export.downscaled_side(n, s).tolist() == expected, s
        assert [export.downscaled_side(int(i), s) for i in n] == expected, s


def test_graph_has_dynamic_size_and_plain_multiplies(strong_onnx):
    graph = onnx.load(str(strong_onnx)).graph
    for value in (graph.input[0], graph.output[0]):
        dims = [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]
        assert dims == ["batch", 3, "height", "width"], value.name
    ops = [node.op_type for node in graph.node]
    assert "Pow" not in ops and ops.count("Resize") == 2 and ops.count("Conv") == 14


@pytest.mark.parametrize("size", SIZES)
def test_onnx_runtime_matches_pytorch(strong_onnx, strong_weights, size):
    x = random_batch(size)
    got = export.onnx_session(strong_onnx).run(None, {"image": x})[0]
    assert got.shape == x.shape
    assert np.abs(got - pytorch_reference(strong_weights, x)).max() < 1e-4


@pytest.mark.parametrize("size", [(18, 30), (97, 131)])
def test_opencv_dnn_matches_pytorch(strong_onnx, strong_weights, size):
    net = cv2.dnn.readNetFromONNX(str(strong_onnx))
    for seed in (0, 1):  # one network object at two inputs: nothing is kept from the first
        x = random_batch(size, batch=1, seed=seed)
        net.setInput(x, "image")
        assert np.abs(net.forward() - pytorch_reference(strong_weights, x)).max() < 1e-4


@pytest.mark.parametrize("scale_factor", [1, 7])
def test_other_scale_factors(strong_weights, tmp_path, scale_factor):
    path = tmp_path / "s.onnx"
    assert (
        run_export("--weight_dir", strong_weights, "--output", path, "--scale_factor", scale_factor, "--opset", 11) == 0
    )
    x = random_batch((23, 38))
    got = export.onnx_session(path).run(None, {"image": x})[0]
    assert np.abs(got - pytorch_reference(strong_weights, x, scale_factor)).max() < 1e-4


def test_fixed_size_graph(strong_weights, tmp_path, capsys):
    path = tmp_path / "fixed.onnx"
    assert run_export("--weight_dir", strong_weights, "--output", path, "--fixed_size", "30x42") == 0
    assert "random 30x42 image" in capsys.readouterr().out
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 30, 42]
    x = random_batch((30, 42), batch=1)
    expected = pytorch_reference(strong_weights, x)
    assert np.abs(export.onnx_session(path).run(None, {"image": x})[0] - expected).max() < 1e-4
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x, "image")
    assert np.abs(net.forward() - expected).max() < 1e-4


def test_fp16_network(strong_weights, tmp_path):
    path = tmp_path / "fp16.onnx"
    assert run_export("--weight_dir", strong_weights, "--output", path, "--fp16") == 0
    x = random_batch((97, 131), batch=1)
    expected = pytorch_reference(strong_weights, x)
    got = export.onnx_session(path).run(None, {"image": x})[0]
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 2 / 255
    net = cv2.dnn.readNetFromONNX(str(path))
    net.setInput(x, "image")
    assert np.abs(net.forward() - expected).max() < 2 / 255


@pytest.mark.parametrize("shape", [(97, 131, 3), (240, 360, 3), (30, 1000, 3)])
def test_reproduces_test_py_on_synthetic_photos(shipped_onnx, enhancer, shape):
    image = dark_image(shape, seed=shape[0])
    got = export.enhance_array_onnx(export.onnx_session(shipped_onnx), image)
    assert got.dtype == np.uint8 and got.shape == image.shape
    assert max_abs_diff(got, enhancer.enhance_array(image)) <= 1


def test_reproduces_test_py_on_real_photos(shipped_onnx, enhancer, shared):
    """Photos of several sizes, none a multiple of 12 on both sides, and one cropped to 301 x 457."""
    session = export.onnx_session(shipped_onnx)
    names = ["LIME/6.bmp", "LIME/8.bmp", "DICM/43.jpg", "real/101_0_.png"]
    images = [image_io.read_image(shared / "data" / "test_data" / name)[0] for name in names]
    images.append(images[2][:301, :457])
    for name, image in zip(names + ["DICM/43.jpg cropped"], images):
        assert image.shape[0] % 12 or image.shape[1] % 12, name
        assert max_abs_diff(export.enhance_array_onnx(session, image), enhancer.enhance_array(image)) <= 2, name


def test_official_weights_export(official_weights, tmp_path):
    path = tmp_path / "official.onnx"
    assert run_export("--weight_dir", official_weights, "--output", path) == 0
    x = random_batch((97, 131))
    assert (
        np.abs(export.onnx_session(path).run(None, {"image": x})[0] - pytorch_reference(official_weights, x)).max()
        < 1e-4
    )


def test_bad_weights_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    output = tmp_path / "out.onnx"
    assert run_export("--weight_dir", bad, "--output", output) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "bad.pth" in err and len(err.splitlines()) == 1
    assert not output.exists()


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_unwritable_output_is_one_line_error(tmp_path, capsys, where):
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    output = blocker / "out.onnx" if where == "under a file" else tmp_path
    assert run_export("--weight_dir", SHIPPED, "--output", output) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and str(output) in err and len(err.splitlines()) == 1
    assert blocker.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_export_replaces_an_existing_file(shipped_onnx, tmp_path):
    output = tmp_path / "sgz.onnx"
    output.write_bytes(b"old")
    assert run_export("--weight_dir", SHIPPED, "--output", output) == 0
    assert output.read_bytes() == shipped_onnx.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["sgz.onnx"]
