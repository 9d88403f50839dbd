"""The enhancement net and the segmentation net: parity with the official code, loading, shapes, freezing."""

import numpy as np
import pytest
import torch

import model
from loss import SGZLoss
from model import EnhanceNet, SegmentationNet, apply_curve, load_enhance_net
from runtime import UserError


def parity_input(z, i):
    return torch.from_numpy(z[f"in{i}"].astype(np.float32) / 255).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def parity(shared):
    return np.load(shared / "reference" / "parity.npz")


@pytest.mark.parametrize("scale", [12, 1])
def test_official_weights_reproduce_official_outputs(parity, official_weights, scale):
    net = load_enhance_net(official_weights, scale_factor=scale).eval()
    for i in range(4):
        with torch.inference_mode():
            enhanced, curve_map = net(parity_input(parity, i))
        np.testing.assert_allclose(enhanced[0].numpy(), parity[f"out_s{scale}_{i}"], rtol=0, atol=1e-5)
        if i == 0:
            np.testing.assert_allclose(curve_map[0].numpy(), parity[f"xr_s{scale}_0"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["sgz_official_Epoch99.pth", "zerodcepp_official_Epoch99.pth"])
def test_official_checkpoints_load_strict_with_official_keys(shared, name):
    path = shared / "reference" / name
    net = load_enhance_net(path)
    assert sum(p.numel() for p in net.parameters()) == 10561
    official = torch.load(path, map_location="cpu", weights_only=True)
    assert set(net.state_dict()) == set(official)
    net.load_state_dict(official, strict=True)


def test_our_state_dict_round_trips_with_official_key_names(tmp_path):
    net = EnhanceNet()
    keys = {f"e_conv{i}.{c}.{t}" for i in range(1, 8) for c in ("depth_conv", "point_conv") for t in ("weight", "bias")}
    assert set(net.state_dict()) == keys
    torch.save(net.state_dict(), tmp_path / "w.pth")
    again = load_enhance_net(tmp_path / "w.pth")
    for k, v in net.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_full_training_checkpoint_and_ddp_prefix_load(tmp_path):
    net = EnhanceNet()
    torch.save({"model": net.state_dict(), "epoch": 3}, tmp_path / "last.pth")
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "ddp.pth")
    for f in ("last.pth", "ddp.pth"):
        assert torch.equal(load_enhance_net(tmp_path / f).e_conv7.point_conv.bias, net.e_conv7.point_conv.bias)


def test_plain_conv_variant_is_detected_from_the_file(tmp_path):
    net = EnhanceNet(conv_type="tc")
    assert "e_conv1.conv.weight" in net.state_dict()
    torch.save(net.state_dict(), tmp_path / "tc.pth")
    assert load_enhance_net(tmp_path / "tc.pth").conv_type == "tc"


def test_wrong_architecture_names_the_file(tmp_path):
    sd = EnhanceNet().state_dict()
    sd["e_conv1.point_conv.weight"] = torch.zeros(16, 3, 1, 1)
    bad = tmp_path / "wrong_shape.pth"
    torch.save(sd, bad)
    with pytest.raises(UserError, match="wrong_shape.pth"):
        load_enhance_net(bad)
    with pytest.raises(UserError, match="wrong_shape.pth"):
        load_enhance_net(bad, conv_type="tc")


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_not_a_checkpoint_names_the_file(tmp_path, content):
    bad = tmp_path / "notes.pth"
    bad.write_bytes(content)
    with pytest.raises(UserError, match="notes.pth"):
        load_enhance_net(bad)
    with pytest.raises(UserError, match="missing.pth"):
        load_enhance_net(tmp_path / "missing.pth")


@pytest.mark.parametrize("hw,scale", [((401, 599), 12), ((13, 13), 12), ((1, 1), 12), ((7, 5), 1), ((360, 264), 12)])
def test_any_size_gives_output_of_the_same_size(hw, scale):
    net = EnhanceNet(scale_factor=scale).eval()
    x = torch.rand(1, 3, *hw)
    with torch.inference_mode():
        enhanced, curve_map = net(x)
    assert enhanced.shape == x.shape and curve_map.shape == x.shape
    assert torch.isfinite(enhanced).all()


def test_non_multiple_sizes_stay_close_to_the_cropped_official_computation(official_weights):
    # The paper's script crops to multiples of 12; our uncropped output agrees with it where both exist.
    net = load_enhance_net(official_weights, scale_factor=12).eval()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 12 * 20, 12 * 30) * 0.3
    with torch.inference_mode():
        full, _ = net(x)
        padded, _ = net(torch.nn.functional.pad(x, (0, 5, 0, 7), mode="replicate"))
    assert padded.shape[-2:] == (247, 365)
    assert (padded[..., :240, :360] - full).abs().mean() < 0.02


def test_curve_is_eight_steps_with_one_map():
    x, r = torch.full((1, 3, 2, 2), 0.2), torch.full((1, 3, 2, 2), -0.5)
    expected = 0.2
    for _ in range(8):
        expected = expected + -0.5 * (expected**2 - expected)
    assert torch.allclose(apply_curve(x, r), torch.full_like(x, expected))


@pytest.mark.parametrize("batch_norm", ["batch", "frozen"])
def test_segmentation_net_is_frozen_and_the_enhancer_learns(batch_norm):
    torch.manual_seed(0)
    seg = SegmentationNet(num_classes=21, backbone="random", batch_norm=batch_norm)
    mode = batch_norm == "batch"  # batch statistics need training mode; it never changes
    assert not any(p.requires_grad for p in seg.parameters()) and seg.training is mode
    seg.eval()
    assert seg.training is mode
    seg.train()
    assert seg.training is mode
    before = {k: v.clone() for k, v in seg.state_dict().items()}  # running BN stats included
    net = EnhanceNet().train()
    enh_before = [p.detach().clone() for p in net.parameters()]
    criterion = SGZLoss(seg_net=seg)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(2, 3, 64, 64) * 0.3
    enhanced, curve_map = net(x)
    total, terms = criterion(x, enhanced, curve_map)
    assert set(terms) == {"tv", "spa", "color", "exp", "seg"} and torch.isfinite(total)
    opt.zero_grad()
    total.backward()
    opt.step()
    assert all(p.grad is None for p in seg.parameters())
    assert all(torch.equal(v, seg.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(enh_before, net.parameters()))


def test_segmentation_logits_at_quarter_size_and_head_init():
    seg = SegmentationNet(num_classes=21, backbone="random")
    with torch.inference_mode():
        out = seg(torch.rand(1, 3, 96, 128))
    assert out.shape == (1, 21, 24, 32)
    w = seg.fpn.classify.weight
    assert abs(w.std().item() - 0.01) < 0.001 and torch.count_nonzero(seg.fpn.classify.bias) == 0


def test_offline_backbone_falls_back_to_random_with_one_warning(monkeypatch, capsys):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    seg = SegmentationNet(backbone="imagenet")
    assert "random" in seg.backbone_source
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ImageNet ResNet-50 weights unavailable" in err[0]


def test_local_backbone_file_is_used(tmp_path):
    resnet = SegmentationNet(backbone="random").resnet
    torch.nn.init.constant_(resnet.conv1.weight, 0.5)
    sd = dict(resnet.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)  # as torchvision saves it
    torch.save(sd, tmp_path / "r50.pth")
    seg = SegmentationNet(backbone=str(tmp_path / "r50.pth"))
    assert torch.all(seg.resnet.conv1.weight == 0.5)
    with pytest.raises(UserError, match="nope.pth"):
        SegmentationNet(backbone=str(tmp_path / "nope.pth"))


def test_integer_weights_are_refused(tmp_path):
    """int64 weights load without complaint into float layers (rounded to whole numbers) and enhance nothing."""
    path = tmp_path / "int.pth"
    torch.save({k: v.long() for k, v in model.EnhanceNet().state_dict().items()}, path)
    with pytest.raises(UserError, match=r"int\.pth holds integer weights \(e_conv1.* is int64\)"):
        model.load_enhance_net(path)


@pytest.mark.parametrize("bad", [0, -3, float("nan"), 1.5, None])
def test_scale_factor_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="scale_factor: expected a positive integer"):
        model.EnhanceNet(scale_factor=bad)
