"""The training objective is the official one: the official train.py builds its segmentation net and never
calls .eval() on it, so its BatchNorm layers normalise with each batch's statistics (its weights are never
trained: they are not in the optimizer). `--seg_bn batch` (our default) computes the same semantic term and
the same update; `--seg_bn frozen` (eval-mode statistics) is a different objective.

Self-contained: the official computation written out with torchvision's ResNet-50 in training mode. Where a
checkout of the official repository is named by SGZ_OFFICIAL_CODE, also against its own modules."""

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

import train
from loss import SGZLoss
from model import EnhanceNet, SegmentationNet

OFFICIAL = os.environ.get("SGZ_OFFICIAL_CODE")
LR, WEIGHT_DECAY, CLIP = 1e-4, 1e-4, 0.1  # the official recipe


def segmentation_net(batch_norm):
    """A seeded segmentation net whose BatchNorm layers hold stored statistics far from any batch's (as
    ImageNet's are from a dark photo's), so that the two BatchNorm behaviours differ."""
    torch.manual_seed(0)
    seg = SegmentationNet(21, backbone="random", batch_norm=batch_norm)
    g = torch.Generator().manual_seed(1)
    for m in seg.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 4 + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return seg


def dark_batch():
    torch.manual_seed(2)
    return torch.rand(2, 3, 64, 64) * 0.3


def official_semantic_term(seg, enhanced):
    """The official semantic term, written out: a plain ResNet-50 in training mode (BatchNorm on batch
    statistics, running statistics updated as PyTorch does by default) under the same FPN head, then the
    official focal loss (gamma 2, eps 1e-7) on a one-hot of the logits' own argmax."""
    resnet = torchvision.models.resnet50()
    resnet.load_state_dict(seg.resnet.state_dict(), strict=False)  # the same weights and stored statistics
    resnet.train()
    x = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(enhanced))))
    c2 = resnet.layer1(x)
    c3 = resnet.layer2(c2)
    c4 = resnet.layer3(c3)
    logits = seg.fpn(c2, c3, c4, resnet.layer4(c4))
    target = torch.argmax(F.log_softmax(logits, dim=1), dim=1).detach()
    one_hot = torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1.0)
    p = (F.softmax(logits, dim=1) * one_hot).sum(1).clamp(1e-7, 1 - 1e-7)
    return (-((1 - p) ** 2) * p.log()).mean()


def our_step(net, seg, images, layout=torch.contiguous_format):
    """One step of train.py's loop; returns the semantic term. The Trainer runs channels-last, which changes
    only the order of float additions."""
    net = net.to(memory_format=layout)
    seg = seg.to(memory_format=layout)
    criterion = SGZLoss(seg)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    terms, _ = train.train_step(
        net, criterion, optimizer, scaler, images.to(memory_format=layout), torch.device("cpu"), False, CLIP
    )
    return terms["seg"] / 0.1


def assert_same_update(ours, ref, start, grad_tolerance=1e-5):
    """The clipped gradients (what Adam receives), relative to their largest, and the new weights agree."""
    moved = max((a - b).abs().max().item() for a, b in zip(ref.state_dict().values(), start.values()))
    assert moved > 5e-5  # the step did move the weights (by about lr)
    for p, q in zip(ref.parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad.contiguous(), p.grad, rtol=0, atol=grad_tolerance * p.grad.abs().max().item())
    if grad_tolerance <= 1e-5:  # Adam's first step is about lr * sign(gradient): equal where the gradients are
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[k].contiguous(), v, rtol=0, atol=1e-6)


def test_batch_statistics_give_the_official_semantic_term_and_frozen_ones_do_not():
    images = dark_batch()
    enhanced = EnhanceNet()(images)[0].detach()
    seg = segmentation_net("batch")
    with torch.no_grad():
        official = official_semantic_term(segmentation_net("batch"), enhanced)
        ours = SGZLoss(seg).semantic(enhanced)
        frozen = SGZLoss(segmentation_net("frozen")).semantic(enhanced)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-5)
    assert abs(frozen - official) > 1e-2  # the test can tell the two objectives apart


def test_one_step_updates_the_network_as_the_official_objective_does():
    images = dark_batch()
    torch.manual_seed(3)
    start = EnhanceNet().state_dict()

    ours = EnhanceNet()
    ours.load_state_dict(start)
    our_seg_term = our_step(ours, segmentation_net("batch"), images)
    channels_last = EnhanceNet()
    channels_last.load_state_dict(start)
    channels_last_seg_term = our_step(channels_last, segmentation_net("batch"), images, torch.channels_last)

    ref = EnhanceNet()
    ref.load_state_dict(start)
    optimizer = torch.optim.Adam(ref.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    enhanced, curve_map = ref(images)
    four_terms, _ = SGZLoss(None)(images, enhanced, curve_map)  # parity with Myloss.py: tests/test_loss.py
    seg_term = official_semantic_term(segmentation_net("batch"), enhanced)
    (four_terms + 0.1 * seg_term).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), CLIP)
    optimizer.step()

    torch.testing.assert_close(our_seg_term, seg_term.detach(), rtol=0, atol=1e-5)
    assert_same_update(ours, ref, start)
    # channels-last: the same sums in another order, amplified through ResNet-50's batch-statistics backward
    torch.testing.assert_close(channels_last_seg_term, seg_term.detach(), rtol=0, atol=1e-5)
    assert_same_update(channels_last, ref, start, grad_tolerance=5e-2)  # float sums in another order


@pytest.fixture
def official_code(monkeypatch):
    """The official repository's modules (modeling/, Myloss.py), imported from SGZ_OFFICIAL_CODE."""
    if not OFFICIAL or not (Path(OFFICIAL) / "modeling" / "fpn.py").is_file():
        pytest.skip("set SGZ_OFFICIAL_CODE to a checkout of the official SGZ repository to compare with its code")
    monkeypatch.syspath_prepend(OFFICIAL)
    import Myloss
    from modeling import fpn, model, resnet

    yield fpn, model, Myloss, resnet
    for name in [n for n in sys.modules if n == "Myloss" or n == "modeling" or n.startswith("modeling.")]:
        del sys.modules[name]


def test_against_the_official_code(official_code, monkeypatch):
    fpn, official_model, Myloss, official_resnet = official_code
    seg = segmentation_net("batch")
    backbone = seg.resnet.state_dict()
    monkeypatch.setattr(official_resnet.model_zoo, "load_url", lambda url, *a, **k: backbone)  # nothing downloaded
    official_seg = fpn.fpn(21)  # in training mode, as the official Trainer leaves it
    official_seg.fpn.load_state_dict(seg.fpn.state_dict())

    images = dark_batch()
    torch.manual_seed(3)
    start = EnhanceNet().state_dict()
    ours = EnhanceNet()
    ours.load_state_dict(start)
    our_seg_term = our_step(ours, seg, images)

    # The official Trainer's get_loss and step, with its own classes.
    net = official_model.enhance_net_nopool(1, conv_type="dsc")
    net.load_state_dict(start)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    enhanced, A = net(images)
    logits = official_seg(enhanced)
    seg_loss = fpn.FocalLoss(gamma=2)(logits, fpn.get_NoGT_target(logits).data)
    loss = (
        1600 * Myloss.L_TV()(A)
        + torch.mean(Myloss.L_spa8(patch_size=4)(enhanced, images))
        + 5 * torch.mean(Myloss.L_color()(enhanced))
        + 10 * torch.mean(Myloss.L_exp(16)(enhanced, 0.6))
        + 0.1 * seg_loss
    )
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
    optimizer.step()

    torch.testing.assert_close(our_seg_term, seg_loss.detach(), rtol=0, atol=1e-5)
    assert_same_update(ours, net, start)
