"""train.py: the run folder (checkpoints, log, plot, closing line), exact resume from last.pth alone (also
after SIGKILL), refusal of used folders, the lock, bad files, non-finite steps, DDP on two CPU processes."""

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import wait_until_paused
from PIL import Image

import train
import train_utils
from dataloader import LowLightDataset, header_is_readable
from model import EnhanceNet, load_enhance_net
from option import get_train_parser
from runtime import PAUSE_VARIABLE, UserError, available_cpus, run_script

ROOT = Path(__file__).resolve().parents[1]


def bomb_png(path, side=100_000):
    """A PNG whose header declares side x side pixels (a decompression bomb) with almost no data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


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
    (d / "empty.png").write_bytes(b"")
    bomb_png(d / "bomb.png")
    return d


def argv_for(images, out, *extra):
    return [
        "--lowlight_images_path",
        str(images),
        "--snapshots_folder",
        str(out),
        "--image_size",
        "32",
        "--train_batch_size",
        "4",
        "--num_workers",
        "0",
        "--seg_weight",
        "0",
        "--display_iter",
        "1",
        "--snapshot_iter",
        "1",
        "--lr",
        "1e-3",
        *extra,
    ]


def args_for(images, out, *extra):
    return get_train_parser().parse_args(argv_for(images, out, *extra))


@pytest.fixture
def cli(monkeypatch, capsys):
    """train.py's command line in this process: (exit status, stderr)."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the script lifts it: restore after

    def run(*argv):
        capsys.readouterr()
        status = run_script(train.main, get_train_parser(), list(argv))
        return status, capsys.readouterr().err

    return run


def run_process(*argv, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def log_steps(folder):
    with open(folder / "loss_log.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def assert_same_weights(a_path, b_path, atol=1e-6):
    a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol)


def test_tiny_run_writes_checkpoints_log_plot_and_a_closing_line(images, tmp_path, cli):
    status, err = cli(*argv_for(images, tmp_path / "run", "--num_epochs", "2", "--display_iter", "2"))
    assert status == 0, err
    run = tmp_path / "run"
    for name in ("Epoch0.pth", "Epoch1.pth"):
        net = load_enhance_net(run / name)  # the exchange format: a bare state_dict, official keys
        assert set(net.state_dict()) == set(EnhanceNet().state_dict())
    full = torch.load(run / "last.pth", weights_only=True)
    assert full["epoch"] == 2 and full["step"] == 6 and full["args"]["image_size"] == 32
    # 3 steps per epoch: every 2nd step, and each epoch's end
    assert log_steps(run) == [2, 3, 4, 6]
    with open(run / "loss_log.csv", newline="") as f:
        totals = [float(r["total"]) for r in csv.DictReader(f)]
    assert totals[-1] < totals[0]
    with Image.open(run / "loss_plot.png") as im:
        assert im.format == "PNG" and im.width > 300
    closing = err.strip().splitlines()[-1]
    assert (
        closing.startswith("done: 2 of 2 epochs complete, step 6")
        and str(run) in closing
        and "loss_plot.png" in closing
    )
    assert f"final loss {totals[-1]:.5f}" in closing
    assert "skipped 3 unreadable file(s)" in err  # broken.jpg, empty.png, bomb.png; readme.txt is no image


def test_short_run_logs_its_last_step_and_its_bar_ends_full(images, tmp_path, cli):
    status, err = cli(*argv_for(images, tmp_path, "--num_epochs", "5", "--display_iter", "10", "--max_steps", "4"))
    assert status == 0, err
    assert log_steps(tmp_path) == [3, 4]  # the epoch's end and the last step, though display_iter is 10
    assert "4/4" in err and "100%" in err
    assert torch.load(tmp_path / "last.pth", weights_only=True)["step"] == 4


def test_resume_alone_after_sigkill_ends_equal_to_an_uninterrupted_run(images, tmp_path, cli):
    common = ["--num_epochs", "4", "--display_iter", "2", "--device", "cpu"]
    assert cli(*argv_for(images, tmp_path / "straight", *common))[0] == 0
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", PAUSE_VARIABLE: "5"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *argv_for(images, run, *common)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_paused(proc)  # after step 5, saved (--snapshot_iter 1): the run waits to be killed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(run / "last.pth", weights_only=True)["step"] == 5

    status, err = cli("--resume", str(run / "last.pth"))  # its settings and its folder come from last.pth
    assert status == 0, err
    assert "overriding" not in err and f"resuming {run / 'last.pth'} at epoch" in err
    assert_same_weights(tmp_path / "straight" / "Epoch3.pth", run / "Epoch3.pth")
    assert log_steps(run) == log_steps(tmp_path / "straight")  # rows after the checkpoint were not kept twice
    assert torch.load(run / "last.pth", weights_only=True)["args"]["num_epochs"] == 4


def test_the_run_folder_holds_its_settings_as_text_and_a_log_of_what_the_console_said(images, tmp_path, cli):
    run = tmp_path / "run"
    status, err = cli(*argv_for(images, run, "--num_epochs", "3", "--max_steps", "2"))
    assert status == 0, err
    settings = json.loads((run / "args.json").read_text())
    assert settings["image_size"] == 32 and settings["max_steps"] == 2 and settings["lr"] == 1e-3
    assert settings == torch.load(run / "last.pth", weights_only=True)["args"]
    log = (run / "train.log").read_text()
    for said in (f"run folder: {run}", "skipped 3 unreadable file(s)", err.strip().splitlines()[-1]):
        assert said in log
    # 3 steps an epoch: stopped in the first, its weights are not called a whole epoch's
    assert "done: epoch 1 of 3, 2 of its 3 steps done, step 2" in err.strip().splitlines()[-1]
    assert (run / "Epoch0_partial.pth").is_file() and not (run / "Epoch0.pth").exists()

    status, err = cli("--resume", str(run / "last.pth"), "--max_steps", "4", "--lr", "2e-3")
    assert status == 0, err
    settings = json.loads((run / "args.json").read_text())
    assert settings["max_steps"] == 4 and settings["lr"] == 2e-3 and settings["image_size"] == 32
    log = (run / "train.log").read_text()
    assert log.count("run folder: ") == 1 and "overriding the saved settings: --lr 0.002 (was 0.001)" in log
    assert log.count("done: ") == 2 and err.strip().splitlines()[-1] in log
    assert (run / "Epoch0.pth").is_file() and not (run / "Epoch0_partial.pth").exists()  # epoch 1 complete
    assert (run / "Epoch1_partial.pth").is_file()


def test_skipped_steps_go_to_the_log(images, tmp_path, monkeypatch, capsys):
    with train.Trainer(args_for(images, tmp_path, "--num_epochs", "1")) as t:
        real_forward = t.criterion.forward
        calls = {"n": 0}

        def once_nan(*a):
            calls["n"] += 1
            total, terms = real_forward(*a)
            return (total * float("nan"), terms) if calls["n"] == 2 else (total, terms)

        monkeypatch.setattr(t.criterion, "forward", once_nan)
        assert t.train() == 0
    assert "non-finite loss or gradient at step 2; step skipped" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_the_last_whole_step_and_resume_loses_nothing(
    images, tmp_path, cli, monkeypatch, signum
):
    common = ["--num_epochs", "2", "--snapshot_iter", "100", "--device", "cpu"]  # 3 steps an epoch
    assert cli(*argv_for(images, tmp_path / "straight", *common))[0] == 0
    real_step, steps = train.train_step, []

    def step_then_signal(*a):  # the signal comes from the work itself, during step 4: no race
        steps.append(len(steps) + 1)
        if len(steps) == 4:
            signal.raise_signal(signum)
        return real_step(*a)

    monkeypatch.setattr(train, "train_step", step_then_signal)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    run = tmp_path / "run"
    status, err = cli(*argv_for(images, run, *common))
    assert status == 130 and steps == [1, 2, 3, 4], err  # step 4 finished, no step 5 begun
    closing = err.strip().splitlines()[-1]
    assert closing.startswith("interrupted at step 4 (epoch 2 of 2, 1 of its 3 steps done)")
    assert f"--resume {run / 'last.pth'}" in closing and closing in (run / "train.log").read_text()
    assert torch.load(run / "last.pth", weights_only=True)["step"] == 4  # saved, though --snapshot_iter is 100
    assert (run / "Epoch0.pth").is_file() and (run / "Epoch1_partial.pth").is_file()
    monkeypatch.setattr(train, "train_step", real_step)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back

    status, err = cli("--resume", str(run / "last.pth"))
    assert status == 0, err
    assert_same_weights(tmp_path / "straight" / "Epoch1.pth", run / "Epoch1.pth")
    assert log_steps(run) == log_steps(tmp_path / "straight")


def test_ctrl_c_at_the_terminal_with_loader_workers_ends_the_step_saves_and_exits_130(images, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *argv_for(images, run, "--num_epochs", "2", "--snapshot_iter", "100")]
        + ["--num_workers", "2"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", PAUSE_VARIABLE: "4"},  # step 5 waits for the signal
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    said = wait_until_paused(proc)
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C reaches the loader's workers too
    err = said + proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted at step 5 (epoch 2 of 2, 2 of its 3 steps done)")
    assert torch.load(run / "last.pth", weights_only=True)["step"] == 5


def test_resume_with_overrides_lists_them_and_refuses_what_cannot_change(images, tmp_path, cli):
    run = tmp_path / "run"
    assert cli(*argv_for(images, run, "--num_epochs", "2", "--max_steps", "2"))[0] == 0
    before = (run / "last.pth").read_bytes()
    for flag, value in [("--train_batch_size", "2"), ("--seed", "7"), ("--conv_type", "tc")]:
        status, err = cli("--resume", str(run / "last.pth"), flag, value)
        assert status == 2 and len(error_lines(err)) == 1 and f"{flag} cannot change" in err
    assert (run / "last.pth").read_bytes() == before
    status, err = cli("--resume", str(run / "last.pth"), "--train_batch_size", "4", "--max_steps", "0", "--lr", "2e-3")
    assert status == 0, err
    overrides = [line for line in err.splitlines() if "overriding the saved settings" in line]
    assert len(overrides) == 1 and overrides[0].endswith("--lr 0.002 (was 0.001), --max_steps 0 (was 2)")
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["step"] == 6 and saved["args"]["lr"] == 2e-3 and saved["args"]["image_size"] == 32


def test_a_used_folder_is_refused_unless_overwritten(images, tmp_path, cli):
    run = tmp_path / "run"
    assert cli(*argv_for(images, run, "--num_epochs", "1", "--max_steps", "1"))[0] == 0
    before = (run / "last.pth").read_bytes()
    status, err = cli(*argv_for(images, run, "--num_epochs", "1", "--lr", "5e-3"))
    assert status == 2 and len(error_lines(err)) == 1
    assert "--resume" in err and "--overwrite" in err and str(run) in err
    assert (run / "last.pth").read_bytes() == before
    status, err = cli(*argv_for(images, run, "--num_epochs", "1", "--overwrite"))
    assert status == 0, err
    assert log_steps(run) == [1, 2, 3] and torch.load(run / "last.pth", weights_only=True)["args"]["lr"] == 1e-3


def test_the_lock_stops_a_second_live_run_and_dies_with_its_process(images, tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import filelock, sys, time; lock = filelock.FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(120)",
            str(run / train_utils.LOCK),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        status, err = cli(*argv_for(images, run, "--num_epochs", "1"))
        assert status == 2 and "in use by another training run" in error_lines(err)[0]
        assert not (run / "last.pth").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    status, err = cli(*argv_for(images, run, "--num_epochs", "1"))  # the lock file is left behind, but not held
    assert status == 0, err


def test_default_folder_is_a_new_one_under_runs_ignored_by_git(images, tmp_path, cli, monkeypatch):
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("git not installed")
    (tmp_path / ".gitignore").write_bytes((ROOT / ".gitignore").read_bytes())
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", ".gitignore"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    argv = [
        a
        for a in argv_for(images, "unused", "--num_epochs", "1", "--max_steps", "1")
        if a not in ("--snapshots_folder", "unused")
    ]
    status, err = cli(*argv)
    assert status == 0, err
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "last.pth").is_file() and (run / "loss_plot.png").is_file()
    assert f"run folder {Path('runs') / run.name}" in err.splitlines()[-1]
    assert (
        subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path, capture_output=True, text=True).stdout
        == "A  .gitignore\n"
    )


@pytest.mark.parametrize("case", ["truncated", "empty", "foreign", "folder", "bare_weights", "missing"])
def test_every_bad_resume_file_is_one_error_line_and_exit_2(images, tmp_path, cli, case):
    run = tmp_path / "run"
    if case == "truncated":
        assert cli(*argv_for(images, run, "--num_epochs", "1", "--max_steps", "1"))[0] == 0
        data = (run / "last.pth").read_bytes()
        (run / "last.pth").write_bytes(data[: len(data) // 2])
        path = run / "last.pth"
    else:
        path = tmp_path / "x.pth"
        if case == "empty":
            path.write_bytes(b"")
        elif case == "foreign":
            path.write_text("these are not the weights you are looking for")
        elif case == "folder":
            path.mkdir()
        elif case == "bare_weights":
            torch.save(EnhanceNet().state_dict(), path)
    status, err = cli("--resume", str(path))
    assert status == 2 and len(error_lines(err)) == 1 and str(path) in error_lines(err)[0], err


def test_a_truncated_resume_file_from_the_command_line_is_one_line_and_no_traceback(images, tmp_path):
    full = tmp_path / "full.pth"
    torch.save({"model": EnhanceNet().state_dict(), "step": 1}, full)
    truncated = tmp_path / "last.pth"
    truncated.write_bytes(full.read_bytes()[:500])
    r = run_process("--resume", str(truncated))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(truncated) in error_lines(r.stderr)[0]


@pytest.mark.parametrize(
    "case", ["empty", "missing", "pretrain_missing", "pretrain_wrong", "pretrain_truncated", "pretrain_folder"]
)
def test_bad_input_is_one_clear_line_and_exit_2(images, tmp_path, cli, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    tc = tmp_path / "tc.pth"
    torch.save(EnhanceNet(conv_type="tc").state_dict(), tc)
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(tc.read_bytes()[:500])
    argv = {
        "empty": ["--lowlight_images_path", str(empty)],
        "missing": ["--lowlight_images_path", str(tmp_path / "nope")],
        "pretrain_missing": ["--load_pretrain", "--pretrain_dir", str(tmp_path / "nope.pth")],
        "pretrain_wrong": ["--load_pretrain", "True", "--pretrain_dir", str(tc)],
        "pretrain_truncated": ["--load_pretrain", "--pretrain_dir", str(truncated)],
        "pretrain_folder": ["--load_pretrain", "--pretrain_dir", str(empty)],
    }[case]
    status, err = cli(*argv_for(images, tmp_path / "out", "--num_epochs", "1"), *argv)
    assert status == 2 and len(error_lines(err)) == 1
    assert {
        "empty": "no training images",
        "missing": "does not exist",
        "pretrain_missing": "nope.pth",
        "pretrain_wrong": "tc.pth",
        "pretrain_truncated": "trunc.pth",
        "pretrain_folder": str(empty),
    }[case] in error_lines(err)[0]


def test_bombs_empty_and_foreign_files_are_skipped_whatever_pillows_limit(images, monkeypatch):
    from PIL import Image

    for limit in (Image.MAX_IMAGE_PIXELS, None):  # Pillow's default raises DecompressionBombError; the scripts lift it
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        assert not header_is_readable(images / "bomb.png")
        dataset = LowLightDataset(images, 32)
        assert sorted(p.name for p in dataset.skipped) == ["bomb.png", "broken.jpg", "empty.png"] and len(dataset) == 12


def test_a_truncated_image_is_replaced_by_the_next_with_a_warning(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 30 * (i + 1), np.uint8)).save(tmp_path / f"{i}.png")
    data = (tmp_path / "0.png").read_bytes()
    (tmp_path / "0.png").write_bytes(data[: len(data) // 2])
    dataset = LowLightDataset(tmp_path, 16)
    assert len(dataset) == 2  # its header is fine
    with pytest.warns(UserWarning, match="0.png"):
        image = dataset[0]
    assert torch.allclose(image, torch.full((3, 16, 16), 60 / 255))


def test_num_workers_fit_the_machine(images, tmp_path, capsys):
    cpus = available_cpus()
    with train.Trainer(args_for(images, tmp_path / "a", "--num_workers", "auto")) as t:
        assert t.data_loader.num_workers == max(0, min(4, cpus - 1))
    with train.Trainer(args_for(images, tmp_path / "b", "--num_workers", str(cpus + 3))) as t:
        assert t.data_loader.num_workers == cpus
    assert f"lowered to {cpus}" in capsys.readouterr().err


def test_semantic_branch_trains_with_a_fixed_segmentation_net(images, tmp_path):
    args = args_for(
        images, tmp_path, "--num_epochs", "1", "--max_steps", "1", "--seg_weight", "0.1", "--seg_backbone", "random"
    )
    with train.Trainer(args) as t:
        seg = t.criterion.seg_net
        assert seg.batch_norm == "batch" and seg.training  # the official objective by default
        seg_before = {k: v.clone() for k, v in seg.state_dict().items()}
        t.train()
        assert all(torch.equal(v, seg.state_dict()[k]) for k, v in seg_before.items())  # running stats included
        assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == {
            id(p) for p in t.model_without_ddp.parameters()
        }
    with open(tmp_path / "loss_log.csv", newline="") as f:
        assert float(next(csv.DictReader(f))["seg"]) > 0


def test_non_finite_steps_are_skipped_then_stop_the_run(images, tmp_path, monkeypatch, capsys):
    with train.Trainer(args_for(images, tmp_path, "--num_epochs", "3")) as t:
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
        assert all(torch.isfinite(v).all() for v in t.model_without_ddp.state_dict().values())
        assert t.position.step == 3 + train_utils.MAX_BAD_STEPS_IN_A_ROW  # steps 4..8 bad in a row


def test_flags_given_on_the_command_line_are_told_from_defaults():
    p = get_train_parser()
    assert p.parse_args([]).given == set()
    assert p.parse_args(["--lr", "1e-4", "--no-amp", "--resume", "x"]).given == {
        "lr",
        "amp",
        "resume",
    }  # even at the default
    assert p.parse_args(["--load_pretrain", "False"]).load_pretrain is False
    assert p.parse_args(["--load_pretrain"]).load_pretrain is True


def test_ddp_on_two_cpu_processes_matches_one_process_with_the_whole_batch(images, tmp_path):
    common = [
        "--lowlight_images_path",
        str(images),
        "--image_size",
        "32",
        "--num_workers",
        "0",
        "--seg_weight",
        "0",
        "--num_epochs",
        "1",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(ROOT / "train.py"),
            *common,
            "--train_batch_size",
            "2",
            "--snapshots_folder",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert sum(line.startswith("done:") for line in r.stderr.splitlines()) == 1  # rank 0 alone reports
    single = run_process(*common, "--train_batch_size", "4", "--snapshots_folder", str(tmp_path / "one"), env=env)
    assert single.returncode == 0, single.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        ".train.lock",
        "Epoch0.pth",
        "args.json",
        "last.pth",
        "loss_log.csv",
        "loss_plot.png",
        "train.log",
    ]
    assert_same_weights(tmp_path / "ddp" / "Epoch0.pth", tmp_path / "one" / "Epoch0.pth", atol=1e-5)
