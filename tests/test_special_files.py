"""Special files where a regular file is expected: every reader refuses FIFOs, devices,
folders and sockets (directly or through a link) with the one documented error and never
blocks or reads without end; every writer refuses to replace them.

The cases are generated: every reader (and writer) against every kind of special path."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import MLPClassifier
from gpumlp.atomic import atomic_write
from gpumlp.cli import main
from gpumlp.data.idx import read_idx, read_idx_header, write_idx
from gpumlp.exceptions import FileFormatError
from gpumlp.files import check_replaceable, file_kind, open_regular_file

pytestmark = [pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning"),
              pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX special files")]

#: Seconds a refusal may take; a reader that blocks on a FIFO would take forever.
TIME_LIMIT = 10.0


def make_fifo(folder: Path) -> Path:
    path = folder / "fifo"
    os.mkfifo(path)
    return path


def make_char_device(folder: Path) -> Path:
    """A character device node of our own (a copy of /dev/zero's numbers), so a broken
    writer replaces this node, never the system's."""
    path = folder / "zero-device"
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    except (PermissionError, OSError):
        return Path("/dev/zero")  # not root: the system's (readers only, see WRITE_TARGETS)
    return path


def make_directory(folder: Path) -> Path:
    path = folder / "folder.npz"
    path.mkdir()
    return path


def make_socket(folder: Path) -> Path:
    path = folder / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays
    return path


def linked(make):
    def make_link(folder: Path) -> Path:
        target = make(folder)
        link = folder / f"link-to-{target.name}"
        link.symlink_to(target)
        return link
    make_link.__name__ = f"link_to_{make.__name__[5:]}"
    return make_link


SPECIAL = [make_fifo, make_char_device, make_directory, make_socket]
SPECIAL += [linked(make) for make in SPECIAL]


def finishes(call, fifo_guard: Path | None = None):
    """Run ``call`` in a thread; its exception (or None) if it ends within the time limit.
    A call still blocked on a FIFO is released by opening the FIFO's other end."""
    outcome = {}

    def run():
        try:
            call()
            outcome["error"] = None
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TIME_LIMIT)
    if thread.is_alive():
        if fifo_guard is not None:
            with contextlib.suppress(OSError):
                fd = os.open(fifo_guard, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
        thread.join(TIME_LIMIT)
        pytest.fail(f"still running after {TIME_LIMIT} s (blocked on a special file)")
    return outcome["error"]


def cli(*argv):
    def run():
        code = main([str(a) for a in argv])
        if code != 1:
            raise AssertionError(f"exit status {code}")
    return run


READERS = {
    "load": lambda p, tmp: gpumlp.load(p),
    "read_idx": lambda p, tmp: read_idx(p),
    "read_idx_header": lambda p, tmp: read_idx_header(p),
    "open_regular_file": lambda p, tmp: open_regular_file(p, "data file").close(),
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("make", SPECIAL, ids=lambda f: f.__name__.removeprefix("make_"))
def test_readers_refuse_special_files_without_blocking(tmp_path, reader, make):
    path = make(tmp_path)
    error = finishes(lambda: READERS[reader](path, tmp_path), fifo_guard=path)
    assert isinstance(error, FileFormatError), repr(error)
    assert isinstance(error, ValueError)
    message = str(error)
    assert str(path) in message and "not a regular file" in message
    assert file_kind(os.stat(path).st_mode) in message  # says what it is


@pytest.mark.parametrize("command", ["evaluate", "export"])
@pytest.mark.parametrize("make", SPECIAL, ids=lambda f: f.__name__.removeprefix("make_"))
def test_cli_refuses_special_model_files_in_one_line(tmp_path, capsys, command, make):
    path = make(tmp_path)
    argv = [command, path] + ([tmp_path / "out.onnx"] if command == "export" else [])
    error = finishes(cli(*argv), fifo_guard=path)
    assert error is None, repr(error)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a regular file" in err and str(path) in err


def fitted_model():
    X = np.random.default_rng(0).normal(size=(30, 3))
    return MLPClassifier((3,), max_iter=2, backend="numpy", random_state=0).fit(
        X, np.arange(30) % 2)


#: Writers that replace a file: each must leave a special file where it is.
WRITERS = {
    "save": lambda p: fitted_model().save(p),
    "write_idx": lambda p: write_idx(p, np.arange(3, dtype=np.uint8)),
    "atomic_write": lambda p: atomic_write(p).__enter__(),
    "check_replaceable": lambda p: check_replaceable(p),
}
WRITE_TARGETS = [m for m in SPECIAL if "sock" not in m.__name__]


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("make", WRITE_TARGETS, ids=lambda f: f.__name__.removeprefix("make_"))
def test_writers_never_replace_a_special_file(tmp_path, writer, make):
    path = make(tmp_path)
    if Path(os.path.realpath(path)).parent != tmp_path.resolve():
        pytest.skip("no device node of our own (needs root); never risk the system's")
    before = os.stat(path)
    error = finishes(lambda: WRITERS[writer](path), fifo_guard=path)
    assert isinstance(error, ValueError), repr(error)
    assert str(os.path.realpath(path)) in str(error) or str(path) in str(error)
    after = os.stat(path)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode)
    assert (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no leftovers


@pytest.mark.parametrize("make", WRITE_TARGETS, ids=lambda f: f.__name__.removeprefix("make_"))
def test_train_output_force_never_replaces_a_special_file(tmp_path, capsys, make):
    path = make(tmp_path)
    if Path(os.path.realpath(path)).parent != tmp_path.resolve():
        pytest.skip("no device node of our own (needs root); never risk the system's")
    before = os.stat(path)
    code = main(["train", "--output", str(path), "--force", "--data-dir",
                 str(tmp_path / "no-data"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--output" in err and err.count("\n") == 1
    assert ("is a directory" in err) if "directory" in make.__name__ else (
        "only a regular file is replaced" in err)
    assert os.stat(path).st_ino == before.st_ino


def test_a_link_to_a_regular_file_reads_and_is_replaced_through(tmp_path):
    model = tmp_path / "real.npz"
    fitted_model().save(model)
    link = tmp_path / "link.npz"
    link.symlink_to(model)
    assert gpumlp.load(link).n_features_in_ == 3
    fitted_model().save(link)
    assert link.is_symlink() and gpumlp.load(link).n_features_in_ == 3


def test_open_regular_file_bounds_the_size_before_reading(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(1000))
    with pytest.raises(FileFormatError, match=r"has 1000 bytes; allowed: at most 999"):
        open_regular_file(path, "data file", max_bytes=999)
    with open_regular_file(path, "data file", max_bytes=1000) as handle:
        assert len(handle.read()) == 1000  # blocking reads, as a plain open gives


def test_missing_files_stay_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_regular_file(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        gpumlp.load(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nope-idx1-ubyte")
