"""The ground floor: what every script and library module shares about the process, and nothing about SGZ.

- `UserError`, the one error type for what the user must fix, and the exit codes;
- `run_script`, where every script starts (parse, configure the process, turn a UserError into one line),
  and `exit_now`, where test.py and the video script end;
- containment: `input_failure`, the one line for an input (a file, a frame, a request, a training image)
  that failed, and `contained`, the block around one input's work; every script reports failures so;
- process settings, each in one place: Pillow's pixel limit, CPU counts, thread limits, the socket timeout,
  SIGTERM, malloc keeping freed memory, the garbage collector paused for start-up;
- files: temporary names, clearing what killed runs left, and `atomic_output`, the one way a file is written.

Containment. Any exception raised while one input is read, decoded, enhanced or encoded (an `Exception`:
MemoryError, cv2.error, ValueError, OSError, a UserError, anything) is that input's failure: it is reported
as one line, the file and the reason (a UserError's message, else the exception's type and message), and
the other inputs go on; a run with failures exits EXIT_SOME_INPUTS_FAILED. KeyboardInterrupt and
SystemExit are not `Exception`s and are never contained. The debug switch: the environment variable
SGZ_DEBUG=1 prints each contained failure's traceback (to stderr) before its line, e.g.
`SGZ_DEBUG=1 python test.py --input_dir photos`. An environment variable rather than a flag, so that
every entry point (test.py, the video script, the demo, evaluate.py, training's Dataset workers) has it.

It imports only the standard library at the top (torch, OpenCV and Pillow are imported where a function
needs them), so every module can stand on it and nothing here imports a module of the project.
"""

import contextlib
import errno
import gc
import os
import secrets
import shutil
import signal
import socket
import stat
import sys
import threading
import traceback
from pathlib import Path

EXIT_SOME_INPUTS_FAILED = 1  # the run went through, but some of its inputs could not be processed
EXIT_CANNOT_RUN = 2  # a bad flag, path, weights file or setting: nothing was done (argparse's status too)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it


class UserError(Exception):
    """Something the user must fix: a missing or bad path, flag, weights file, image or video. Its message
    is one line that says what, which file, and what to do. The scripts print it without a traceback;
    any other exception is a bug and keeps its traceback."""


# ---------------------------------------------------------------------------------------------
# Starting and ending a script
# ---------------------------------------------------------------------------------------------
def plural(count, noun):
    """'1 image', '2 images': a count and its noun, for messages (regular plurals only)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def configure_process():
    """Process-wide settings the scripts make, here and nowhere else. Pillow's own pixel limit is lifted
    because the image reader checks --max_mpix itself from the header, before decoding (Pillow would
    stop at 179 MPix and warn from 89). Freed memory is kept for reuse (keep_freed_memory)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    keep_freed_memory()


def pause_garbage_collection():
    """Stop Python's cyclic garbage collector for a script's start-up (call it before the imports). PyTorch's
    import and the network's loading make 300,000 objects that live as long as the process, and collecting
    them over and over while they are made (4 full collections) took 0.35 s of a 1.5 s start-up. Nothing made
    then is garbage worth collecting. resume_garbage_collection ends the pause."""
    gc.disable()


def resume_garbage_collection():
    """End pause_garbage_collection once the start-up is over: the objects made so far are frozen out of
    later collections (gc.freeze: they live as long as the process), and collection resumes. Nothing
    happens where collection was not paused (a script's main called from Python, as the tests do)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


@contextlib.contextmanager
def garbage_collection_paused():
    """pause_garbage_collection for a block of start-up work (imports, loading a network), resumed after it."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            resume_garbage_collection()


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20  # glibc's own largest (HEAP_MAX_SIZE / 2 on 64-bit)
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory():
    """Let glibc's malloc keep freed blocks for the next image instead of handing them back to the kernel.
    By default a block over 128 KB (a decoded photo, a frame, a band) is its own mapping, unmapped when freed,
    and the free memory at the top of a heap is returned; the next image's buffers are then fresh pages,
    each faulted in and zeroed by the kernel on first touch: a third of test.py's system time and 10% of its
    wall time on a folder of photos. Blocks up to 32 MB (a 4K frame is 25 MB) now come from the heaps, which
    keep up to 1 GB free; larger ones are still mapped and unmapped. Peak memory is unchanged (the blocks
    are reused, not added). Only with glibc (elsewhere nothing is done)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def run_script(main, parser, argv=None):
    """Parse argv, configure the process and run main(args), which returns an exit status (None: 0).
    A UserError becomes one `error:` line and EXIT_CANNOT_RUN, Ctrl-C EXIT_INTERRUPTED."""
    args = parser.parse_args(argv)
    configure_process()
    try:
        return main(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def exit_now(status):
    """End the process with `status` once every output is written, without the interpreter's teardown: with
    PyTorch loaded that teardown (freeing its modules' objects one by one) takes 0.5-1 s and does nothing a
    finished command needs. Only for a script's last line, after its files are closed and its threads done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def interrupt_on_sigterm():
    """SIGTERM (kill, a scheduler's time limit) ends a script as Ctrl-C does, so that atomic_output removes
    its temporary file (SIGKILL cannot be caught: remove_stale_temporaries clears up after it). Both also
    release the threads waiting at a pause_point."""

    def handler(signum, frame):
        release_pause_points()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# ---------------------------------------------------------------------------------------------
# A pause for tests that signal a script mid-work
# ---------------------------------------------------------------------------------------------
PAUSE_VARIABLE = "SGZ_TEST_PAUSE_AFTER"
PAUSED = f"{PAUSE_VARIABLE}: paused"  # the line a paused script writes to stderr
_pause_calls = [0]
_pause_lock = threading.Lock()
_pause_released = threading.Event()


def pause_point():
    """A test's hook, a no-op in use. Each script calls it in one place, at the start of each unit of work
    (a frame to encode, an image, a training step). With SGZ_TEST_PAUSE_AFTER=N in the environment, once N
    units have begun the next call writes PAUSED to stderr, and it and every later call wait for SIGINT or
    SIGTERM. A test that signals a script mid-work waits for that line and signals then: the work waits for
    the signal, not the other way round, so no race decides what the test sees."""
    limit = os.environ.get(PAUSE_VARIABLE)
    if limit is None:
        return
    with _pause_lock:
        _pause_calls[0] += 1
        calls = _pause_calls[0]
    if calls <= int(limit):
        return
    if calls == int(limit) + 1:
        print(f"\n{PAUSED}", file=sys.stderr, flush=True)  # on a line of its own, after any progress bar
    while not _pause_released.wait(1):  # the main thread's wait ends with the handler's KeyboardInterrupt
        pass


def release_pause_points():
    """Let the threads waiting at pause_point go on (the signal handlers call it)."""
    _pause_released.set()


# ---------------------------------------------------------------------------------------------
# Containment: one bad input never costs another
# ---------------------------------------------------------------------------------------------
DEBUG_VARIABLE = "SGZ_DEBUG"


def debugging():
    """Whether SGZ_DEBUG asks for the tracebacks of contained failures (set, and not 0/false/no)."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def failure_reason(exc):
    """An exception as one line: a UserError's message (it says what to do), else the exception's type
    and message (OpenCV's span several lines: joined)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, UserError):
        return text
    if isinstance(exc, MemoryError):
        return f"MemoryError: out of memory{f' ({text})' if text else ''}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def input_failure(name, exc):
    """The one line that reports that input `name` (a path, a request, a frame) failed with `exc`: its name
    and failure_reason (the name once, where the reason already holds it). With SGZ_DEBUG set, the
    traceback goes to stderr first."""
    if debugging():
        traceback.print_exception(exc, file=sys.stderr)
    reason = failure_reason(exc)
    return reason if str(name) and str(name) in reason else f"{name}: {reason}"


@contextlib.contextmanager
def contained(name, report):
    """Run one input's work; any Exception it raises is that input's failure: `report(line)` gets the
    input_failure line and the caller goes on with the next input. KeyboardInterrupt and SystemExit pass."""
    try:
        yield
    except Exception as e:
        report(input_failure(name, e))


# ---------------------------------------------------------------------------------------------
# Process settings
# ---------------------------------------------------------------------------------------------
def available_cpus():
    """The CPU cores this process may run on (its affinity, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def thread_limits(torch_threads, opencv_threads):
    """torch's and OpenCV's thread counts for a block, restored after it. Many images (or frames and an
    encoder) at once want serial ops: an op split over threads waits at a barrier for all of them, and on
    a busy machine that wait is a scheduler time slice (~10 ms) per op (4-200x slower here).
    opencv_threads 0 runs each OpenCV call in its calling thread."""
    import cv2
    import torch

    old = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(opencv_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old[0])
        cv2.setNumThreads(old[1])


@contextlib.contextmanager
def socket_timeout(seconds):
    """The process's default socket timeout for a block (torch.hub's download sets none), restored after it."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


# ---------------------------------------------------------------------------------------------
# Files: temporary names and atomic output
# ---------------------------------------------------------------------------------------------
TEMP_PREFIX = ".sgz-"  # every temporary file this project writes starts so (see temporary_name)
TEMP_SUFFIX = ".tmp"


def temporary_name(path):
    """`.sgz-<pid>-<random>.tmp<ext>`: a few bytes whatever the final name's length; the extension is kept
    because some writers (FFmpeg) choose the format from it, the pid tells a dead writer's leftovers."""
    path = Path(path)
    suffix = path.suffix if len(path.suffix) <= 8 else ""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}{suffix}")


def is_stale_temporary(path):
    """A temporary file of ours whose writing process (on this machine) is gone."""
    name = Path(path).name
    if not (name.startswith(TEMP_PREFIX) and TEMP_SUFFIX in name):
        return False
    pid = name[len(TEMP_PREFIX) :].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by someone else
        return False
    return False


def remove_stale_temporaries(folders):
    """Delete the temporary files that killed runs of ours left in `folders` (a write between its temporary
    file and its rename, killed with SIGKILL or by a power cut). Returns how many."""
    removed = 0
    for folder in folders:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(folder):
                if is_stale_temporary(Path(entry.path)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed += 1
    return removed


# Where a file is written: a regular file or nothing. Anything else (a device such as /dev/full, a FIFO, a
# socket, a folder) would be replaced by the rename (as root, /dev/full became a 56 KB file) or block the writer.
KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
}
# Errors of a write that are the machine's state, not a bug: a full disk or quota, a file size limit, a
# read-only or failing disk. They become one line naming the file.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def output_target(path):
    """The file a write to `path` replaces, after the symlink policy: `path` itself, or for a symbolic link
    its final target. Raises UserError for what may not be written over (see check_output_path)."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    except OSError as e:  # a file where a folder should be, a name too long, no permission to look
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    if stat.S_ISLNK(st.st_mode):
        target = Path(os.path.realpath(path))
        try:
            st = os.stat(target)
        except FileNotFoundError:
            raise UserError(
                f"cannot write {path}: it is a symbolic link to nothing ({os.readlink(path)}); "
                "remove the link or give another output path"
            ) from None
        except OSError as e:  # a loop of links
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        if stat.S_ISREG(st.st_mode):
            return target
        path = target
    if not stat.S_ISREG(st.st_mode):
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise UserError(f"cannot write {path}: it is {kind}; give the path of a new or regular file")
    return path


def check_output_path(path):
    """Refuse, before any work, an output path that is not a regular file or nothing: a device node, a FIFO,
    a socket or a folder (UserError, one line; the thing itself is left untouched). Scripts call it as
    soon as they know their output, before loading the network or decoding; atomic_output checks again
    (the path may have changed since). Returns the file that will be written (see atomic_output's symlink
    policy)."""
    return output_target(path)


def check_output_folder(folder):
    """Refuse, before any work, an output folder that is something else than a folder (or nothing yet):
    a regular file, a device, a FIFO, a socket, or a link to one. One line, UserError."""
    folder = Path(folder)
    try:
        st = os.stat(folder)  # through links: a link to a folder is a folder
    except FileNotFoundError:
        return folder
    except OSError as e:
        raise UserError(f"cannot write into the output folder {folder}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "a file")
        raise UserError(f"cannot write into the output folder {folder}: it is {kind}; give a folder or a new path")
    return folder


@contextlib.contextmanager
def atomic_output(path):
    """The one way this project writes a file. Yields a temporary path beside the destination; on success
    the temporary file replaces the destination in one step (os.replace), on failure (an error, Ctrl-C,
    SIGTERM turned into an exception) it is removed. A reader never sees a half-written file and an old
    file survives a crash. The temporary name is short (see temporary_name), so any name the file system
    takes works, and recognisable, so remove_stale_temporaries clears what SIGKILL left.

    The destination must be a regular file or nothing: a folder, device node (/dev/full), FIFO or socket is
    refused with one line (UserError) and left untouched; it is checked before the temporary file is made
    and again just before the rename (it may have changed while the file was written).

    Symlink policy: a symbolic link is followed, and its final target is written (the temporary file beside
    the target, renamed over it), provided the target is a regular file; the link itself stays. This is what
    a shell's `>` and `cp` do: a link such as `latest.onnx -> v3.onnx` keeps pointing where the user made it
    point, instead of being silently turned into a regular file. A link to nothing (dangling) or to anything
    but a regular file is refused: creating a file wherever a dangling link points (possibly outside the
    folder the user named, the classic trap in shared folders) is not what anyone asks for by naming a link.

    A full disk, a quota, a file size limit or a read-only disk while writing becomes one UserError naming
    the file (OSError of those kinds raised inside the block)."""
    target = output_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = temporary_name(target)
            try:  # 0o666 less the umask: the mode of any new file (mkstemp's would be private, 0o600)
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                break
            except FileExistsError:
                continue
    except OSError as e:  # a read-only or missing folder, a file where a folder should be: the user's to fix
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        try:
            yield tmp
        except OSError as e:
            if e.errno in WRITE_ERRNOS:
                raise UserError(f"cannot write {path}: {e.strerror or e}") from None
            raise
        if output_target(path) != target:  # replaced by something else (or relinked) meanwhile
            raise UserError(f"cannot write {path}: it changed while it was being written; try again")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_torch(obj, path):
    """torch.save through atomic_output. PyTorch reports a failed write (a full disk: "enforce fail at
    inline_container.cc", "PytorchStreamWriter failed writing file") as a RuntimeError: it becomes one
    UserError naming the file."""
    import torch

    with atomic_output(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            if "inline_container" not in str(e) and "PytorchStreamWriter" not in str(e):
                raise
            free = shutil.disk_usage(Path(tmp).parent).free
            why = (
                "the disk is full"
                if free < (1 << 20)
                else "the write failed (a full disk, a quota or a file size limit?)"
            )
            raise UserError(f"cannot write {path}: {why}; free some space or choose another folder") from None
