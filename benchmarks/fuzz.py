"""Coverage-guided fuzzing (atheris, libFuzzer) of what faces a user's files: image decoding, header parsing,
metadata splicing, the web demo's upload handler and the checkpoint loader (tests/fuzz/targets.py says what
each target promises). Every input that makes a target break its promise is a crasher: it is saved, once
per distinct failure (exception type and the line that raised it), and fuzzing goes on.

    python benchmarks/fuzz.py --minutes 3                    # every target for 3 minutes each, one after another
    python benchmarks/fuzz.py --seconds 30 --target decode   # one target
    python benchmarks/fuzz.py --minutes 3 --save             # crashers also go to tests/fuzz/regressions/<target>/

It prints, per target, the executions run and the crashers found (with their base64), and exits 1 when
it found any. The seeds (tests/fuzz/seeds) and the regression corpus start every run; the inputs that
reach new code go to --corpus (a temporary folder by default). Each target fuzzes in a process of its own:
libFuzzer ends its process when it is done. tests/test_fuzz.py runs this for a few seconds a target."""

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import targets  # noqa: E402  (only the table: a target's modules are imported by its worker, instrumented)

# libFuzzer's own findings, named by the kind of failure: a crash of the process, an input slower than
# -timeout, a process past -rss_limit_mb.
LIBFUZZER_ARTIFACTS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
PER_INPUT_TIMEOUT_S = 60  # far beyond any input of the seeds' size on a busy CPU: only a hang reaches it
RSS_LIMIT_MB = 3072  # the demo's process idles at 0.7 GB; a 16-megapixel decode takes 0.3 GB at most
MAX_INPUT_BYTES = 16384


def signature(e):
    """A failure's identity: the exception type and the innermost line that raised it."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{type(e).__name__} at {where}"


def worker(names, seconds, crashers, corpus, seed):
    """Fuzz the targets `names` in this process (libFuzzer exits it at the end). With several, an input's
    first byte chooses its target (libFuzzer mutates it too) and the rest is the input: one process and
    one start for all, as CI wants. Crashers go to crashers/<target>/, the executions of each target to
    crashers/executions.json (rewritten every second)."""
    import atheris

    include = sorted({module for name in names for module in targets.INSTRUMENTED[name]})
    with atheris.instrument_imports(include=include):
        from PIL import Image

        Image.init()  # every format plugin, now (Pillow imports them on first use, outside this block)
        runs = [targets.load(name) for name in names]
    if "checkpoint" in names:
        instrument_torch_loading(atheris)
    seen, executions, written = set(), dict.fromkeys(names, 0), [time.monotonic()]
    for name in names:
        (crashers / name).mkdir(parents=True, exist_ok=True)

    def one_input(data):
        index = 0
        if len(names) > 1:
            if not data:
                return
            index, data = data[0] % len(names), data[1:]
        name = names[index]
        executions[name] += 1
        if time.monotonic() - written[0] > 1:
            (crashers / "executions.json").write_text(json.dumps(executions))
            written[0] = time.monotonic()
        try:
            runs[index](data)
        except Exception as e:  # noqa: BLE001  (every exception that escapes a target is a finding)
            found = f"{name}: {signature(e)}"
            if found in seen:
                return
            seen.add(found)
            save_crasher(crashers / name, data, f"{signature(e)}\n{''.join(traceback.format_exception(e))}")

    corpus.mkdir(parents=True, exist_ok=True)
    if len(names) == 1:
        corpora = [corpus, targets.SEEDS, targets.REGRESSIONS / names[0]]
    else:  # the seeds and regressions, each with the byte that chooses its target(s)
        for index, name in enumerate(names):
            for path in targets.corpus_files(name):
                data = bytes([index]) + path.read_bytes()
                (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
        corpora = [corpus]
    argv = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        f"-seed={seed}",
        f"-timeout={PER_INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_INPUT_BYTES}",
        f"-artifact_prefix={crashers}/",
        "-print_final_stats=1",
        *[str(c) for c in corpora if c.is_dir()],
    ]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


def instrument_torch_loading(atheris):
    """Coverage of torch.load's parsers (zip records, the legacy format, the weights-only unpickler) without
    instrumenting all of torch on import, which slows every input tenfold."""
    import torch._weights_only_unpickler as unpickler
    import torch.serialization as serialization

    unpickler.Unpickler.load = atheris.instrument_func(unpickler.Unpickler.load)
    for name in ("_load", "_legacy_load"):
        setattr(serialization, name, atheris.instrument_func(getattr(serialization, name)))


def save_crasher(folder, data, note):
    name = hashlib.sha1(data).hexdigest()[:16]
    (folder / name).write_bytes(data)
    (folder / f"{name}.txt").write_text(note)
    print(f"\nNEW CRASHER {folder.name}/{name}: {note}", file=sys.stderr, flush=True)


def fuzz(names, seconds, crashers, corpus, seed):
    """Run a worker on the targets `names`; returns {target: executions}."""
    command = [sys.executable, __file__, "--worker", ",".join(names), "--seconds", str(seconds)]
    command += ["--seed", str(seed), "--crashers", str(crashers), "--corpus", str(corpus)]
    crashers.mkdir(parents=True, exist_ok=True)
    # The worker stops itself after `seconds`; the margin covers its start (imports, the seed corpus) on a busy CPU.
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 600, errors="replace")
    output = result.stdout + result.stderr
    # libFuzzer's own findings (a hang, a process past the memory limit, a crash of the process itself).
    for path in crashers.iterdir():
        if path.is_file() and path.name.startswith(LIBFUZZER_ARTIFACTS):
            data, kind = path.read_bytes(), path.name.split("-")[0]
            index = data[0] % len(names) if len(names) > 1 and data else 0
            (crashers / names[index]).mkdir(parents=True, exist_ok=True)
            save_crasher(crashers / names[index], data[1:] if len(names) > 1 else data, f"{kind} (libFuzzer)")
            path.unlink()
    counts = crashers / "executions.json"
    executions = json.loads(counts.read_text()) if counts.is_file() else dict.fromkeys(names, 0)
    total = re.findall(r"stat::number_of_executed_units: (\d+)", output) or re.findall(r"Done (\d+) runs", output)
    if len(names) == 1 and total:
        executions = {names[0]: int(total[-1])}
    if result.returncode != 0 and not any(crasher_files(crashers / name) for name in names):
        (crashers / "worker-failed.txt").write_text(output[-5000:])  # it failed before fuzzing: say why
    return executions


def crasher_files(crashers):
    """The crashing inputs saved in a target's crashers folder (not the notes beside them)."""
    if not crashers.is_dir():
        return []
    return sorted(p for p in crashers.iterdir() if p.suffix != ".txt" and p.is_file())


def report(target, crashers):
    """Lines describing a target's crashers: what failed, and the input as base64."""
    lines = []
    for path in crasher_files(crashers):
        note = path.with_name(path.name + ".txt")
        kind = note.read_text().splitlines()[0] if note.is_file() else "?"
        lines.append(f"[{target}] {path.name}: {kind}\n  base64: {base64.b64encode(path.read_bytes()).decode()}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target", action="append", choices=targets.TARGETS, help="a target (repeatable); all by default"
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="fuzzing time per target (with --together: in all)")
    length.add_argument("--seconds", type=float, help="fuzzing time per target (with --together: in all; default 10)")
    parser.add_argument("--together", action="store_true", help="all targets in one process (one start: for CI)")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once (each in its own process)")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer's random seed (0: a new one each run)")
    parser.add_argument("--crashers", type=Path, help="where crashers go, a folder per target (default: temporary)")
    parser.add_argument("--corpus", type=Path, help="where the inputs that reach new code go (default: temporary)")
    parser.add_argument("--save", action="store_true", help="add new crashers to tests/fuzz/regressions/<target>/")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    seconds = max(1, round(args.minutes * 60 if args.minutes else args.seconds or 10))
    if args.worker:
        return worker(args.worker.split(","), seconds, args.crashers, args.corpus, args.seed)

    work = Path(tempfile.mkdtemp(prefix="sgz-fuzz-"))
    crashers = args.crashers or work / "crashers"
    corpus = args.corpus or work / "corpus"
    chosen = args.target or list(targets.TARGETS)
    start = time.monotonic()
    if args.together:
        executions = fuzz(chosen, seconds, crashers, corpus / "together", args.seed)
    else:
        from concurrent.futures import ThreadPoolExecutor

        def one(name):
            return fuzz([name], seconds, crashers / name, corpus / name, args.seed)[name]

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            executions = dict(zip(chosen, pool.map(one, chosen)))
    found = []
    for failed in sorted(crashers.rglob("worker-failed.txt")):
        found.append(f"the fuzzer did not run ({failed.parent.name}):\n{failed.read_text()}")
    for target in chosen:
        folder = crashers / target if args.together else crashers / target / target
        found += report(target, folder)
        print(f"{target:11} {executions.get(target, 0):9} executions, {len(crasher_files(folder))} crashers")
        if args.save:
            destination = targets.REGRESSIONS / target
            destination.mkdir(parents=True, exist_ok=True)
            for path in crasher_files(folder):
                shutil.copyfile(path, destination / path.name)
    spent = f"{seconds} s {'in all' if args.together else 'per target'}"
    print(f"total: {sum(executions.values())} executions ({spent}), {time.monotonic() - start:.0f} s wall")
    print("\n".join(found))
    if not args.crashers and not found:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if found else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core a worker: the fuzzer is single-threaded anyway
    sys.exit(main())
