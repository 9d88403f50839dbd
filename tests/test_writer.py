"""The one output writer (runtime.atomic_output, check_output_path, save_torch) and the scripts that use it:
the destination is a regular file or nothing; anything else is refused in one line and left as it was."""

import errno
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import export
import runtime
import train
import train_utils
from option import get_export_parser, get_train_parser
from runtime import UserError, atomic_output, check_output_path, run_script

SHIPPED = ROOT / "weight" / "sgz.pth"


def write(path, data=b"new"):
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# runtime.atomic_output
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def specials(tmp_path):
    """A FIFO, a folder and a Unix socket, by name."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    yield tmp_path
    sock.close()


@pytest.mark.parametrize("name, kind", [("fifo", "a FIFO (named pipe)"), ("folder", "a folder"), ("sock", "a socket")])
def test_special_destinations_are_refused_and_left_as_they_are(specials, name, kind):
    before = os.lstat(specials / name)
    for attempt in (lambda: check_output_path(specials / name), lambda: write(specials / name)):
        with pytest.raises(UserError) as e:
            attempt()
        assert str(e.value) == f"cannot write {specials / name}: it is {kind}; give the path of a new or regular file"
    after = os.lstat(specials / name)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert listing(specials) == ["fifo", "folder", "sock"]  # no temporary file left


def test_a_device_is_refused_before_anything_is_written():
    before = os.stat("/dev/null")
    with pytest.raises(UserError, match="cannot write /dev/null: it is a character device"):
        write("/dev/null")
    assert os.stat("/dev/null").st_rdev == before.st_rdev


def test_symlink_policy_writes_through_a_link_to_a_regular_file_and_keeps_the_link(tmp_path):
    (tmp_path / "v3.onnx").write_bytes(b"old")
    (tmp_path / "latest.onnx").symlink_to("v3.onnx")
    write(tmp_path / "latest.onnx", b"new")
    assert os.readlink(tmp_path / "latest.onnx") == "v3.onnx"
    assert (tmp_path / "v3.onnx").read_bytes() == b"new" and listing(tmp_path) == ["latest.onnx", "v3.onnx"]


@pytest.mark.parametrize("target", ["nowhere", "fifo"])
def test_symlink_to_nothing_or_to_a_fifo_is_refused(tmp_path, target):
    if target == "fifo":
        os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UserError, match="cannot write .*(link to nothing|it is a FIFO)"):
        write(tmp_path / "link")
    assert os.readlink(tmp_path / "link") == target and not (tmp_path / "nowhere").exists()


def test_a_destination_that_becomes_a_fifo_while_written_is_refused_and_kept(tmp_path):
    path = tmp_path / "out.bin"
    with pytest.raises(UserError, match="out.bin: it is a FIFO"), atomic_output(path) as tmp:
        open(tmp, "wb").close()
        os.mkfifo(path)  # the race the second check is for
    assert path.is_fifo() and listing(tmp_path) == ["out.bin"]


def test_a_full_disk_inside_the_writer_is_one_line_naming_the_file(tmp_path):
    with (
        pytest.raises(UserError, match=r"^cannot write .*out\.bin: No space left on device$"),
        atomic_output(tmp_path / "out.bin"),
    ):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert listing(tmp_path) == []


def test_a_checkpoint_that_does_not_fit_on_the_disk_is_one_line(tmp_path):
    """torch.save under a file size limit (what a full disk does to it): PyTorch's 'enforce fail at
    inline_container.cc' RuntimeError becomes one line naming the file, and no file is left."""
    code = (
        "import resource, signal, sys, torch; sys.path.insert(0, sys.argv[1]); import runtime; "
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
        "sys.exit(runtime.run_script(lambda a: runtime.save_torch(torch.zeros(100_000), sys.argv[2]), "
        "__import__('argparse').ArgumentParser(), []))"
    )
    target = tmp_path / "last.pth"
    r = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(target)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(
        f"error: cannot write {target}: "
    )
    assert listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# The scripts: export.py, train.py (the video script: tests/test_video.py)
# ---------------------------------------------------------------------------------------------
def test_export_to_a_fifo_is_refused_before_the_network_loads(tmp_path, capsys, monkeypatch):
    fifo = tmp_path / "sgz.onnx"
    os.mkfifo(fifo)
    monkeypatch.setattr(export.model, "load_enhance_net", lambda *a, **k: pytest.fail("the network was loaded"))
    assert run_script(export.main, get_export_parser(), ["--weight_dir", str(SHIPPED), "--output", str(fifo)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: cannot write {fifo}: it is a FIFO (named pipe); give the path of a new or regular file"
    assert fifo.is_fifo() and listing(tmp_path) == ["sgz.onnx"]


BAD_TRAINING_VALUES = [
    ("--lr", "nan"),
    ("--lr", "-1"),
    ("--lr", "0"),
    ("--weight_decay", "nan"),
    ("--weight_decay", "-0.1"),
    ("--tv_weight", "nan"),
    ("--tv_weight", "inf"),
    ("--exp_level", "nan"),
    ("--exp_level", "1.5"),
    ("--grad_clip_norm", "-1"),
    ("--seed", "-5"),
    ("--max_steps", "-1"),
    ("--image_size", "4"),
    ("--num_workers", "-2"),
    ("--scale_factor", "0"),
    ("--device", "gpu0"),
]


@pytest.mark.parametrize("flag, value", BAD_TRAINING_VALUES)
def test_bad_training_values_are_one_line_exit_2_and_create_nothing(tmp_path, monkeypatch, capsys, flag, value):
    monkeypatch.chdir(tmp_path)  # the default run folder would be runs/DATE-TIME here
    with pytest.raises(SystemExit) as e:
        run_script(train.main, get_train_parser(), [flag, value])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert f"error: argument {flag}: expected " in err and "Traceback" not in err
    assert listing(tmp_path) == []


def test_bad_training_value_from_the_command_line_leaves_no_run_folder(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--lr", "nan"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "train.py: error: argument --lr: expected a positive finite number, got 'nan' (see --help)"
    ]
    assert listing(tmp_path) == []


@pytest.mark.parametrize("what", ["file", "fifo"])
def test_a_run_folder_that_is_no_folder_is_refused(tmp_path, capsys, what):
    folder = tmp_path / "run"
    folder.write_text("keep") if what == "file" else os.mkfifo(folder)
    status = run_script(train.main, get_train_parser(), ["--snapshots_folder", str(folder)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith(f"error: cannot write into the output folder {folder}: it is ")
    assert listing(tmp_path) == ["run"] and (folder.read_text() == "keep" if what == "file" else folder.is_fifo())


def test_a_fifo_among_the_run_files_is_refused_before_training(tmp_path, capsys):
    os.mkfifo(tmp_path / train_utils.LOG)
    status = run_script(train.main, get_train_parser(), ["--snapshots_folder", str(tmp_path)])
    assert status == 2 and "it is a FIFO" in capsys.readouterr().err
    assert listing(tmp_path) == [train_utils.LOG] and (tmp_path / train_utils.LOG).is_fifo()


def test_save_torch_writes_atomically(tmp_path):
    runtime.save_torch({"w": torch.ones(3)}, tmp_path / "a.pth")
    assert torch.equal(torch.load(tmp_path / "a.pth", weights_only=True)["w"], torch.ones(3))
    assert listing(tmp_path) == ["a.pth"]


def test_a_bad_setting_saved_in_a_checkpoint_is_refused_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = {"model": {}, "optimizer": {}, "scaler": {}, "epoch": 0, "step": 1, "batch_in_epoch": 1, "rng": {}}
    torch.save({**ckpt, "args": {"lr": float("nan"), "tv_weight": 1600.0}}, run / "last.pth")
    status = run_script(train.main, get_train_parser(), ["--resume", str(run / "last.pth")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.splitlines()[-1] == (
        f"error: --resume {run / 'last.pth'} holds a bad --lr setting: "
        "expected a positive finite number, got 'nan'; start a new run"
    )
    assert listing(run) == ["last.pth"]


def test_a_run_that_fails_while_it_is_built_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default run folder: runs/DATE-TIME here
    (tmp_path / "kept").mkdir()
    for argv in (
        ["--lowlight_images_path", "nowhere"],
        ["--snapshots_folder", "kept/new/run", "--lowlight_images_path", "x"],
    ):
        status = run_script(train.main, get_train_parser(), argv)
        assert status == 2 and "training images not found" in capsys.readouterr().err
        assert listing(tmp_path) == ["kept"] and listing(tmp_path / "kept") == []
