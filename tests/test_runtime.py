"""runtime.py's process settings: what they change, measured in fresh processes."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

import runtime

ROOT = Path(__file__).resolve().parents[1]

# Two threads enhance 30 "images" each, as test.py's threads do: a decoded image, its small copy, the output and
# the encoded file, of the sizes of a photo folder (512x512, 1080p, 4K); prints the page faults.
FAULTS_OF_IMAGE_BUFFERS = """
import resource, sys, threading
import numpy as np
import runtime
if sys.argv[1] == "keep":
    runtime.keep_freed_memory()
def image(size):
    decoded = np.empty(size, np.uint8); decoded.fill(1)
    small = np.empty(size // 9, np.uint8); small.fill(1)
    out = np.empty(size, np.uint8); out.fill(2)
    del decoded
    encoded = np.empty(size // 2, np.uint8); encoded.fill(3)
    del out, small, encoded
sizes = [512 * 512 * 3, 1920 * 1080 * 3, 3840 * 2160 * 3]
def work(first):
    for i in range(30):
        image(sizes[(first + i) % 3])
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def page_faults(mode):
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_IMAGE_BUFFERS, mode], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc's settings are glibc's")
def test_freed_buffers_are_reused_without_page_faults():
    """By default glibc hands freed blocks back to the kernel, and each image's buffers are faulted in page by page
    again (45,000 faults here); with keep_freed_memory they are reused once the heaps have grown (6,000)."""
    default, kept = page_faults("default"), page_faults("keep")
    assert kept * 4 < default


def test_garbage_collection_is_paused_for_a_block_and_its_objects_frozen():
    import gc

    frozen = gc.get_freeze_count()
    try:
        with runtime.garbage_collection_paused():
            assert not gc.isenabled()
            kept = [[i] for i in range(1000)]  # made during start-up, alive for the run
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(kept)
        runtime.resume_garbage_collection()  # not paused: nothing happens
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + len(kept)
        gc.disable()
        with runtime.garbage_collection_paused():  # paused by someone else: left paused
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_test_py_starts_up_without_collections_then_collects(tmp_path):
    """As a script, test.py pauses the collector before its imports and resumes it once the network is loaded:
    no collection runs in between, and collection is on for the images."""
    from PIL import Image

    (tmp_path / "in").mkdir()
    Image.new("RGB", (16, 12), (20, 10, 5)).save(tmp_path / "in" / "a.png")
    code = f"""
import gc, runpy, sys
import runtime
collections = []
gc.callbacks.append(lambda phase, info: phase == "start" and collections.append(gc.isenabled()))
def report(status):
    print(status, gc.isenabled(), gc.get_freeze_count() > 100000, collections.count(False))
    sys.stdout.flush()
    raise SystemExit(0)
runtime.exit_now = report
sys.argv = ["test.py", "--input_dir", {str(tmp_path / "in")!r}, "--test_dir", {str(tmp_path / "out")!r}]
runpy.run_path("test.py", run_name="__main__")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-4:] == ["0", "True", "True", "0"], done.stdout
