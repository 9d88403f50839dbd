"""hubconf.py through torch.hub itself, from this clone (source="local": offline)."""

import pytest
import torch
from conftest import ROOT

import model
from runtime import UserError

SHIPPED = ROOT / "weight" / "sgz.pth"


def hub_load(**kwargs):
    return torch.hub.load(str(ROOT), "sgz", source="local", **kwargs)


def assert_same_weights(net, path):
    expected = model.load_enhance_net(path).state_dict()
    got = net.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_default_is_the_shipped_weights_at_scale_12():
    net = hub_load()
    assert isinstance(net, model.EnhanceNet) and net.scale_factor == 12 and not net.training
    assert_same_weights(net, SHIPPED)
    x = torch.rand(1, 3, 30, 41, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        enhanced, curve_map = net(x)
        expected = model.load_enhance_net(SHIPPED, scale_factor=12)(x)[0]
    assert enhanced.shape == x.shape and curve_map.shape == x.shape
    assert torch.equal(enhanced, expected)


def test_not_pretrained_is_a_fresh_network():
    net = hub_load(pretrained=False, scale_factor=4)
    assert isinstance(net, model.EnhanceNet) and net.scale_factor == 4
    shipped = model.load_enhance_net(SHIPPED).state_dict()
    assert not torch.equal(net.state_dict()["e_conv1.depth_conv.weight"], shipped["e_conv1.depth_conv.weight"])


def test_weights_path(strong_weights):
    net = hub_load(weights=str(strong_weights), scale_factor=1)
    assert net.scale_factor == 1
    assert_same_weights(net, strong_weights)


def test_official_weights(official_weights):
    assert_same_weights(hub_load(weights=official_weights), official_weights)


def test_bad_weights_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found") as raised:
        hub_load(weights=tmp_path / "missing.pth")
    # worded for a Python caller: the argument, not the command line's flag
    assert "weights=" in str(raised.value) and "--weight_dir" not in str(raised.value)
