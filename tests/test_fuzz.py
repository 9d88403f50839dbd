"""The fuzz targets (tests/fuzz/targets.py) in CI: the committed corpus, seeds and every crasher ever found,
replayed through every target in this process; then all targets fuzzed together for 25 s by atheris
(benchmarks/fuzz.py --together: one process, an input's first byte choosing its target). A crasher found
here is a real bug: the failure shows it as base64 (save it under tests/fuzz/regressions/<target>/ and fix
what it shows)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import targets

FUZZ_SECONDS = 25  # all targets together, in one process: about 40 s with its start on an idle core


def test_the_corpus_has_seeds_of_every_kind_and_the_known_crashers():
    suffixes = {p.suffix for p in targets.SEEDS.iterdir()}
    assert {".jpg", ".png", ".tif", ".bmp", ".webp", ".gif", ".heic", ".avif", ".pth"} <= suffixes
    assert sum(p.stat().st_size for p in targets.SEEDS.iterdir()) < 300_000
    assert all("." in p.name for p in targets.SEEDS.iterdir()), "libFuzzer's inputs (named by hash) in the seeds"
    for name in ("tiff_text_tile_width.tif", "jpeg_junk_before_sof.jpg", "bmp_4x2000000.bmp"):
        assert all((targets.REGRESSIONS / t / name).is_file() for t in ("decode", "header", "demo")), name


@pytest.mark.parametrize("name", targets.TARGETS)
def test_every_corpus_file_is_handled_by_every_target(name):
    """Seeds and the regressions of every target (a crasher of one target is a good input for the others)."""
    failures = targets.replay(targets.load(name), targets.corpus_files())
    assert not failures, "\n".join(f"{path.name}: {type(e).__name__}: {e}" for path, e in failures)


def test_fuzzing_every_target_briefly_finds_no_crasher(tmp_path):
    pytest.importorskip("atheris")
    command = [sys.executable, str(ROOT / "benchmarks" / "fuzz.py"), "--together", "--seconds", str(FUZZ_SECONDS)]
    command += ["--seed", "1", "--crashers", str(tmp_path / "crashers"), "--corpus", str(tmp_path / "corpus")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"new crashers (base64 below):\n{result.stdout[-20000:]}\n{result.stderr[-2000:]}"
    executions = dict(re.findall(r"^(\w+) +(\d+) executions", result.stdout, re.MULTILINE))
    assert set(executions) == set(targets.TARGETS)
    assert all(int(n) > 0 for n in executions.values()), result.stdout
