"""train.py: checkpoints, exact resume, DDP on two CPU processes, bad input, non-finite steps."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from model import EnhanceNet, load_enhance_net
from option import UserError, get_train_parser

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 small dark images of mixed formats and sizes, plus files the loader must skip."""
    d = tmp_path_factory.mktemp("train_images")
    rng = np.random.default_rng(0)
    for i in range(12):
        arr = (rng.random((40 + i, 48, 3)) * 80).astype(np.uint8)
        sub = d / ("sub" if i % 3 == 0 else "")
        sub.mkdir(exist_ok=True)
        Image.fromarray(arr).save(sub / f"{i}.{['jpg', 'png', 'bmp'][i % 3]}")
    (d / "readme.txt").write_text("not an image")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    return d


def args_for(images, out, *extra):
    return get_train_parser().parse_args([
        "--lowlight_images_path", str(images), "--snapshots_folder", str(out), "--image_size", "32",
        "--train_batch_size", "4", "--num_workers", "0", "--seg_weight", "0", "--display_iter", "1",
        "--snapshot_iter", "1", "--lr", "1e-3", *extra])


def run_cli(*argv, env=None):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def test_tiny_run_writes_loadable_checkpoints_and_a_loss_log(images, tmp_path):
    t = train.Trainer(args_for(images, tmp_path, "--num_epochs", "2"))
    assert len(t.dataset) == 12 and len(t.dataset.skipped) == 1  # broken.jpg counted, readme.txt ignored
    before = EnhanceNet().state_dict()
    t.train()
    for name in ("Epoch0.pth", "Epoch1.pth"):
        net = load_enhance_net(tmp_path / name)  # the exchange format: a bare state_dict, official keys
        assert set(net.state_dict()) == set(before)
    full = torch.load(tmp_path / "last.pth", weights_only=True)
    assert full["epoch"] == 2 and full["step"] == 6 and set(full) >= {"model", "optimizer", "args", "rng"}
    rows = (tmp_path / "loss_log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,total,tv,spa,color,exp") and len(rows) == 1 + 6
    totals = [float(r.split(",")[2]) for r in rows[1:]]
    assert totals[-1] < totals[0]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(images, tmp_path):
    train.Trainer(args_for(images, tmp_path / "straight", "--num_epochs", "3")).train()
    # Interrupted mid-epoch (step 4 of 9 is inside epoch 2), then resumed to the same end.
    train.Trainer(args_for(images, tmp_path / "split", "--num_epochs", "3", "--max_steps", "4")).train()
    assert torch.load(tmp_path / "split" / "last.pth", weights_only=True)["step"] == 4
    train.Trainer(args_for(images, tmp_path / "split", "--num_epochs", "3",
                           "--resume", str(tmp_path / "split" / "last.pth"))).train()
    a = torch.load(tmp_path / "straight" / "Epoch2.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "Epoch2.pth", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    assert not torch.equal(a["e_conv7.point_conv.bias"], EnhanceNet().state_dict()["e_conv7.point_conv.bias"])


def test_semantic_branch_trains_with_a_frozen_segmentation_net(images, tmp_path):
    t = train.Trainer(args_for(images, tmp_path, "--num_epochs", "1", "--max_steps", "1", "--seg_weight", "0.1",
                               "--seg_backbone", "random"))
    seg_before = {k: v.clone() for k, v in t.criterion.seg_net.state_dict().items()}
    t.train()
    assert all(torch.equal(v, t.criterion.seg_net.state_dict()[k]) for k, v in seg_before.items())
    header, row = (tmp_path / "loss_log.csv").read_text().splitlines()[:2]
    assert header.split(",")[7] == "seg" and float(row.split(",")[7]) > 0
    assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == {id(p) for p in t.net.parameters()}


def test_non_finite_steps_are_skipped_then_stop_the_run(images, tmp_path, monkeypatch, capsys):
    t = train.Trainer(args_for(images, tmp_path, "--num_epochs", "3"))
    real_forward = t.criterion.forward
    calls = {"n": 0}

    def sometimes_nan(*a):
        calls["n"] += 1
        total, terms = real_forward(*a)
        return (total * float("nan"), terms) if calls["n"] == 2 or calls["n"] >= 4 else (total, terms)

    monkeypatch.setattr(t.criterion, "forward", sometimes_nan)
    with pytest.raises(UserError, match="non-finite"):
        t.train()
    assert "step 2; step skipped" in capsys.readouterr().err
    assert all(torch.isfinite(v).all() for v in t.net.state_dict().values())
    assert t.step == 3 + train.MAX_BAD_STEPS_IN_A_ROW  # steps 4..8 bad in a row


def test_load_pretrain_false_means_false():
    p = get_train_parser()
    assert p.parse_args(["--load_pretrain", "False"]).load_pretrain is False
    assert p.parse_args(["--load_pretrain", "True"]).load_pretrain is True
    assert p.parse_args(["--load_pretrain"]).load_pretrain is True
    assert p.parse_args([]).load_pretrain is False


@pytest.mark.parametrize("case", ["empty", "missing", "pretrain_missing", "pretrain_wrong", "resume_bare"])
def test_bad_input_is_one_clear_line_and_exit_2(images, tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    tc = tmp_path / "tc.pth"
    torch.save(EnhanceNet(conv_type="tc").state_dict(), tc)
    bare = tmp_path / "bare.pth"
    torch.save(EnhanceNet().state_dict(), bare)
    argv = {"empty": ["--lowlight_images_path", str(empty)],
            "missing": ["--lowlight_images_path", str(tmp_path / "nope")],
            "pretrain_missing": ["--load_pretrain", "--pretrain_dir", str(tmp_path / "nope.pth")],
            "pretrain_wrong": ["--load_pretrain", "True", "--pretrain_dir", str(tc)],
            "resume_bare": ["--resume", str(bare)]}[case]
    base = ["--lowlight_images_path", str(images), "--snapshots_folder", str(tmp_path / "out"), "--image_size", "32",
            "--train_batch_size", "4", "--num_workers", "0", "--seg_weight", "0", "--num_epochs", "1"]
    r = run_cli(*base, *argv)
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert {"empty": "no training images", "missing": "does not exist", "pretrain_missing": "nope.pth",
            "pretrain_wrong": "tc.pth", "resume_bare": "bare.pth"}[case] in lines[0]


def test_ddp_on_two_cpu_processes_matches_one_process_with_the_whole_batch(images, tmp_path):
    common = ["--lowlight_images_path", str(images), "--image_size", "32", "--num_workers", "0", "--seg_weight", "0",
              "--num_epochs", "1", "--lr", "1e-3", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "train.py"), *common, "--train_batch_size", "2", "--snapshots_folder", str(tmp_path / "ddp")],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    single = run_cli(*common, "--train_batch_size", "4", "--snapshots_folder", str(tmp_path / "one"), env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["Epoch0.pth", "last.pth", "loss_log.csv"]
    a = torch.load(tmp_path / "ddp" / "Epoch0.pth", weights_only=True)
    b = torch.load(tmp_path / "one" / "Epoch0.pth", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
