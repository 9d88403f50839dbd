"""The documentation is true: every shell command shown in README.md and docs/*.md runs, as a new user would run
it, on the shipped samples; docs/options.md is what the parsers say; links point at files that exist.

Each fenced ```bash / ```sh / ```console block runs in a fresh copy of the repository (so every block works from a
clone, and nothing is left in this one), its commands one after another with bash, HOME a folder of its own.
The placeholders of the examples are real files there (PLACEHOLDERS); long jobs are shortened by flags appended to
the command (SHORTEN); `pip install` is never run; `python demo/app.py` is started, its page fetched, and stopped.
A block that cannot run here is marked in the Markdown source, on the line before its fence, with
`<!-- no-test: the reason -->`. Every file the commands write must be ignored by .gitignore.
"""

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "docs"))
import make_options  # noqa: E402

from runtime import available_cpus  # noqa: E402

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
NO_TEST = re.compile(r"<!--\s*no-test:\s*(.*?)\s*-->")
SAMPLES = ROOT / "data" / "test_data"
# What the examples' placeholder names stand for, in each block's working copy (paths relative to it; "~" is HOME).
PLACEHOLDERS = {
    "night.jpg": SAMPLES / "coffee.jpg",  # a user's dark photo
    "~/night": SAMPLES,  # a folder of them
    "~/dark": SAMPLES,  # training images
    "data/train_data": SAMPLES,  # where the official training set goes
}
CLIP = "night.mp4"  # a user's dark video: made by make_clip
# Flags appended to long jobs (argparse: the last value given wins). A resumed run continues one more step.
SHORTEN = [
    (re.compile(r"\btrain\.py\b.*--resume\b"), ["--max_steps", "2"]),
    (
        re.compile(r"\btrain\.py\b"),
        [
            "--max_steps",
            "1",
            "--image_size",
            "32",
            "--seg_weight",
            "0",
            "--train_batch_size",
            "2",
            "--num_workers",
            "0",
        ],
    ),
]
SERVER = re.compile(r"\bdemo/app\.py\b")
COMMAND_TIMEOUT_S = 180


def shell_blocks(path):
    """(id, language, text, no-test reason or None) of each fenced shell block in a Markdown file."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NO_TEST.search(previous)
        if fence.group(1) in SHELL_LANGUAGES:
            block_id = f"{path.relative_to(ROOT)}:{i + 1}"
            yield block_id, fence.group(1), "\n".join(lines[i + 1 : end]), marker.group(1) if marker else None
        i = end + 1


def strip_comment(line):
    """The line without a trailing `# comment` (a # outside quotes, after a space)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k].rstrip()
    return line.rstrip()


def commands(language, text):
    """The commands of a block: continuation lines joined, comments and prompts removed, `pip install` dropped."""
    lines = text.splitlines()
    if language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    joined, current = [], ""
    for line in lines:
        line = strip_comment(line)
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    result = []
    for command in filter(str.strip, joined):
        parts = [p.strip() for p in command.split(" && ") if not p.strip().startswith(("pip ", "python -m pip "))]
        if parts:
            result.append(" && ".join(parts))
    return result


ALL_BLOCKS = [block for path in DOCS for block in shell_blocks(path)]
TESTED = [b for b in ALL_BLOCKS if b[3] is None]


def shortened(command):
    for pattern, flags in SHORTEN:
        if pattern.search(command):
            return f"{command} {shlex.join(flags)}"
    return command


def make_clip(path, frames=6, width=64, height=48):
    """A short dark H.264 clip."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = (rng.random((height, width, 3)) * 40 + i).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))


def working_copy(folder, clip):
    """A copy of the repository (without .git) with the placeholders in place; (copy, HOME, files before)."""
    repo, home = folder / "repo", folder / "home"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".git", ".pytest_cache"), symlinks=True)
    home.mkdir()
    before = {p.relative_to(repo) for p in repo.rglob("*")}
    for name, source in PLACEHOLDERS.items():
        target = home / name[2:] if name.startswith("~/") else repo / name
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    shutil.copy(clip, repo / CLIP)
    return repo, home, before


def run_server(command, repo, env, log):
    """Start the demo on a free port, fetch its page, stop it with Ctrl-C."""
    proc = subprocess.Popen(
        ["bash", "-c", f"exec {command} --port 0"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put("")], daemon=True).start()
    try:
        deadline, output = time.monotonic() + COMMAND_TIMEOUT_S, ""
        while "in a browser" not in output:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if not line:
                log.append(output + "(no address printed)\n")
                return False
            output += line
        port = re.search(r"http://\S+:(\d+)", output).group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as answer:
            ok = answer.status == 200 and b"<html" in answer.read().lower()
        log.append(output + f"GET / -> {'200 and a page' if ok else 'no page'}\n")
        return ok
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_block(block, folder, clip):
    """Run one block's commands in a fresh copy. Returns (ok, log, files written that .gitignore misses)."""
    block_id, language, text, _ = block
    repo, home, before = working_copy(folder, clip)
    env = {**os.environ, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    log = []
    for command in commands(language, text):
        command = shortened(command)
        log.append(f"$ {command}\n")
        if SERVER.search(command):
            if not run_server(command, repo, env, log):
                return False, "".join(log), []
            continue
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        log.append(result.stdout[-3000:] + result.stderr[-3000:])
        if result.returncode != 0:
            log.append(f"exit status {result.returncode}\n")
            return False, "".join(log), []
    written = sorted(
        str(p.relative_to(repo))
        for p in repo.rglob("*")
        if p.is_file() and p.relative_to(repo) not in before and "__pycache__" not in p.parts
    )
    written = [p for p in written if p not in PLACEHOLDERS and p != CLIP and not p.startswith("data/train_data/")]
    unignored = [
        p for p in written if subprocess.run(["git", "check-ignore", "-q", "--no-index", p], cwd=ROOT).returncode
    ]
    return True, "".join(log), unignored


@pytest.fixture(scope="session")
def block_results(tmp_path_factory, request):
    """The selected blocks, run in parallel (each in its own copy): {block id: (ok, log, unignored outputs)}."""
    selected = {
        item.callspec.params["block"][0]
        for item in request.session.items
        if hasattr(item, "callspec") and "block" in item.callspec.params
    }
    base = tmp_path_factory.mktemp("docs")
    make_clip(base / CLIP)
    with ThreadPoolExecutor(max(2, available_cpus())) as pool:
        futures = {
            b[0]: pool.submit(run_block, b, base / f"block{n}", base / CLIP)
            for n, b in enumerate(TESTED)
            if b[0] in selected
        }
        return {block_id: future.result() for block_id, future in futures.items()}


@pytest.mark.parametrize("block", TESTED, ids=[b[0] for b in TESTED])
def test_documented_commands_run(block, block_results):
    ok, log, unignored = block_results[block[0]]
    assert ok, f"{block[0]} failed:\n{log}"
    assert not unignored, f"{block[0]} writes files .gitignore does not cover: {unignored}"


def test_untested_blocks_say_why():
    untested = [(b[0], b[3]) for b in ALL_BLOCKS if b[3] is not None]
    assert all(reason for _, reason in untested), untested
    assert len(untested) < len(TESTED)  # the exception, not the rule
    print("\n".join(f"not run: {block_id}: {reason}" for block_id, reason in untested))


def test_block_parsing():
    text = (
        "pip install -r requirements.txt && python test.py   # quick\n"
        'python x.py --a "b # c" \\\n    --d e  # note\n'
        "# a comment line\n"
        "pip install torch\n"
    )
    assert commands("bash", text) == ["python test.py", 'python x.py --a "b # c"      --d e']
    assert commands("console", "$ python a.py\noutput # here\n$ ls") == ["python a.py", "ls"]
    assert shortened("python train.py --resume r/last.pth").endswith("--max_steps 2")
    assert "--image_size 32" in shortened("python train.py --lowlight_images_path ~/dark")


def test_readme_is_a_landing_page():
    assert len((ROOT / "README.md").read_bytes()) <= 15_000
    assert len([p for p in DOCS if p.parent.name == "docs"]) >= 4
    readme = (ROOT / "README.md").read_text()
    assert readme.index("--index-url https://download.pytorch.org/whl/cpu") < readme.index(
        "pip install -r requirements.txt"
    )


def test_options_md_is_generated_from_the_parsers():
    assert (ROOT / "docs" / "options.md").read_text() == make_options.render(), (
        "docs/options.md is out of date: run python docs/make_options.py"
    )


def test_relative_links_point_at_files():
    missing = []
    for path in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if not re.match(r"[a-z]+:", target) and not (path.parent / target).exists():
                missing.append(f"{path.relative_to(ROOT)}: {target}")
    assert not missing, missing
