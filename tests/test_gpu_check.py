"""benchmarks/gpu_check.py on the CPU (its smoke test, --quick): every stage runs in its own process and lands
in the results file; a failing stage is recorded and the run goes on; the deadline skips what would not fit."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, dark_image

import image_io


def gpu_check(tmp_path, *argv):
    out = tmp_path / "results.json"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "gpu_check.py"),
            "--device",
            "cpu",
            "--quick",
            "--out",
            str(out),
            *argv,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    return r, json.loads(out.read_text())


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    for i in range(2):
        image_io.write_image(folder / f"{i}.png", dark_image((60, 80, 3), seed=i))
    return folder


def test_cpu_smoke_run_fills_every_stage(tmp_path, photos):
    r, results = gpu_check(tmp_path, "--input_dir", str(photos))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    stages = results["stages"]
    assert list(stages) == ["correctness", "inference", "training", "test_py"]
    assert all(s["status"] == "ok" for s in stages.values()), {k: s["status"] for k, s in stages.items()}

    tests = stages["correctness"]
    assert tests["counts"]["passed"] == len(tests["tests"]) == 6 and "--device cpu" in tests["command"]

    inference = stages["inference"]
    assert {(c["precision"], c["mode"]) for c in inference["checks"]} == {("fp32", "eager"), ("bf16", "eager")}
    assert all(c["max_diff_vs_enhancer"] <= 1 for c in inference["checks"])
    assert {(d["precision"], d["batch"]) for d in inference["device"] if d["frames_per_s"] > 0} == {
        ("fp32", 1),
        ("fp32", 2),
        ("bf16", 1),
        ("bf16", 2),
    }
    assert "CUDA" in inference["skipped"][0]

    training = {run["setting"]: run for run in stages["training"]["runs"]}
    assert set(training) == {"official-like", "ours fp32", "ours amp"}
    assert training["official-like"]["vs_official_like"] == 1.0
    assert all(run["s_per_image"] > 0 and run["loss"] > 0 for run in training.values())

    test_py = stages["test_py"]
    assert test_py["images"] == 2 and test_py["floor_s"] > 0
    assert [(run["precision"], run["outputs"]) for run in test_py["runs"]] == [("fp32", 2)]

    assert len(results["bars"]) == 4 and all(bar["met"] is None for bar in results["bars"])  # bars are for CUDA
    assert "bars apply to CUDA" in r.stdout and "results in" in r.stdout


def test_a_failing_stage_is_recorded_with_its_error(tmp_path):
    (tmp_path / "empty").mkdir()  # test.py refuses an empty folder
    r, results = gpu_check(tmp_path, "--stages", "test_py", "--input_dir", str(tmp_path / "empty"))
    assert r.returncode == 1
    test_py = results["stages"]["test_py"]
    assert test_py["status"] == "failed" and len(test_py["runs"]) == 1
    assert all("exited with status 2" in run["error"] and "no images" in run["error"] for run in test_py["runs"])
    assert "ERROR" in r.stdout


def test_the_deadline_leaves_out_what_would_not_fit(tmp_path):
    r, results = gpu_check(tmp_path, "--stages", "training", "--deadline", "5")
    assert r.returncode == 1
    assert (
        results["stages"]["training"]["status"] == "not_run" and "deadline" in results["stages"]["training"]["reason"]
    )


def test_bars_are_judged_on_cuda_results():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    run = {"precision": "fp16", "mode": "compiled+graph", "batch": 32}
    stages = {
        "inference": {
            "status": "ok",
            "device_name": "GPU",
            "frame": "1200x900 RGB uint8",
            "checks": [],
            "device": [{**run, "frames_per_s": 9000.0}, {**run, "batch": 1, "frames_per_s": 12000.0}],
            "host_to_host": [{**run, "frames_per_s": 2400.0}, {**run, "error": "Traceback\nRuntimeError: x"}],
        },
        "training": {
            "status": "ok",
            "size": 512,
            "batch": 6,
            "semantic_loss": True,
            "runs": [
                {"setting": "official-like", "s_per_image": 0.1, "vs_official_like": 1.0, "loss": 3.0, "peak_mb": 9},
                {"setting": "ours fp32", "s_per_image": 0.04, "vs_official_like": 0.4, "loss": 3.0, "peak_mb": 9},
                {"setting": "ours amp", "s_per_image": 0.03, "vs_official_like": 0.3, "loss": 3.0, "peak_mb": 9},
            ],
        },
    }
    bars, lines = gpu_check.bars_and_summary({"device": "cuda", "stages": stages})
    assert [(bar["value"], bar["met"]) for bar in bars] == [(12000.0, True), (2400.0, False), (0.4, True), (0.3, False)]
    assert "ERROR RuntimeError: x" in "\n".join(lines)
