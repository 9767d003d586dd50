"""Atomic outputs: write to temporary names in the target directory, rename when complete.

Guarantees (README "Atomic outputs"):

* The final name never holds a partial file: it holds the previous file (or nothing) until the
  complete new one is renamed over it (``os.replace``, atomic within a directory). A SavedModel
  directory is replaced by renaming the old one aside, then the new one in.
* Temporaries are ``.<final name>.senet-hub-tmp-<host>-<pid>-<random>`` in the same directory, so
  concurrent writers never share one. Any error removes them. A process killed mid-write
  (SIGKILL, power cut) cannot clean up: the next senet-hub run that writes into that directory
  removes temporaries whose process no longer exists (``clean_stale_temps``).
* Files are fsync'ed before the rename: after a crash the final name holds either the old or the
  complete new content, not an empty file.
* Outputs of several files (Caffe prototxt + caffemodel, MXNet symbol + params) are renamed back
  to back after all are complete; a kill between two renames can pair a new file with an old one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator

from .errors import OutputError

TMP_MARK = ".senet-hub-tmp-"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
# <host>-<pid>-<random>; the host part is missing in names written by older versions
_TMP_RE = re.compile(re.escape(TMP_MARK) + r"(?:([0-9a-f]{6})-)?(\d+)-[0-9a-f]{8}$")
FOREIGN_STALE_S = 24 * 3600  # temporaries of another host (shared folder) are left alone this long
DIR_MARK = ".senet-hub-output"  # written into every directory output: marks it as replaceable by senet-hub
NAME_MAX = 255  # bytes of one file name on the usual file systems (ext4, xfs, btrfs, tmpfs, APFS)
SLOW_WRITE_ENV = "SENET_HUB_TEST_SLOW_WRITE"  # tests: seconds to sleep between writing and renaming


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, before any work, when the output's directory is missing or not writable."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise OutputError(f"{path}: directory {d} does not exist; create it or choose another output path")
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: directory {d} is not writable; choose another output path")
    if os.path.isdir(path):
        if os.path.splitext(path)[1] != "" and not replaceable_dir(path):
            raise OutputError(f"{path}: is an existing directory; choose a file name")
        if not replaceable_dir(path):
            raise OutputError(
                f"{path}: is an existing directory that is neither empty, a SavedModel nor written by senet-hub; "
                "it is left untouched: remove it yourself or choose another output path"
            )


def replaceable_dir(path: str | os.PathLike) -> bool:
    """May an existing directory be replaced by an output? Only when nothing of the user's can be in it.

    That is: empty, a TensorFlow SavedModel (saved_model.pb/.pbtxt at its top) or a directory
    senet-hub wrote (it carries DIR_MARK). A user's folder of files is never moved aside or deleted.
    """
    try:
        names = set(os.listdir(path))
    except OSError:
        return False
    return not names or bool(names & {"saved_model.pb", "saved_model.pbtxt", DIR_MARK})


def temp_name(path: str) -> str:
    """A unique temporary name beside `path`; the final name's part is shortened to fit NAME_MAX.

    The suffix (what clean_stale_temps recognises) is kept whole; the name part is cut on a UTF-8
    character boundary, so any name the file system allows for the output can be written.
    """
    d, base = os.path.split(os.path.abspath(path))
    suffix = f"{TMP_MARK}{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    raw = os.fsencode(base)
    room = NAME_MAX - 1 - len(suffix)
    if len(raw) > room:
        raw = raw[:room]
        while raw and (raw[-1] & 0xC0) == 0x80:  # continuation bytes of a cut character
            raw = raw[:-1]
        if raw and raw[-1] >= 0xC0:  # the lead byte of the cut character
            raw = raw[:-1]
    return os.path.join(d, "." + os.fsdecode(raw) + suffix)


def _remove(p: str) -> None:
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists (another user's process)
        return True
    return True


def clean_stale_temps(directory: str | os.PathLike) -> list[str]:
    """Remove senet-hub temporaries in `directory` left by processes that no longer exist.

    Only names senet-hub makes are touched (``.<name>.senet-hub-tmp-<host>-<pid>-<8 hex>``), and
    only when their process is gone (this host), or when they are a day old (another host's, on a
    shared folder). A live writer's temporaries are never removed. Returns what was removed.
    """
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = _TMP_RE.search(name) if name.startswith(".") else None
        if not m:
            continue
        p = os.path.join(directory, name)
        host, pid = m.group(1), int(m.group(2))
        if host in (None, _HOST):
            if _pid_alive(pid):
                continue
        else:
            try:
                if now - os.lstat(p).st_mtime < FOREIGN_STALE_S:
                    continue
            except OSError:
                continue
        try:
            _remove(p)
        except OSError:  # not ours to remove after all (permissions): leave it
            continue
        removed.append(p)
    return removed


def _fsync(p: str) -> None:
    paths = [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs] + [p] if os.path.isdir(p) else [p]
    for q in paths:
        if os.path.islink(q):
            continue
        fd = os.open(q, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(d: str) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be fsync'ed
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_dir(t: str, p: str) -> None:
    """Rename directory t to p, replacing an existing p; concurrent writers of p may race.

    An existing p is moved aside (and then deleted) only when replaceable_dir allows it: checked
    again here, right before, because the early check in check_writable was minutes ago.
    """
    olds = []
    try:
        for _ in range(20):
            try:
                os.rename(t, p)  # succeeds when p is absent (or an empty directory)
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                    raise
            if os.path.isdir(p) and not os.path.islink(p) and not replaceable_dir(p):
                raise OutputError(
                    f"{p}: is an existing directory that is neither empty, a SavedModel nor written by senet-hub; "
                    "it is left untouched: remove it yourself or choose another output path"
                )
            if os.path.lexists(p) and not os.path.isdir(p):
                raise OutputError(f"{p}: exists and is not a directory; remove it or choose another output path")
            old = temp_name(p)
            try:
                os.rename(p, old)  # aside; another writer may have done it first
                olds.append(old)
            except FileNotFoundError:
                pass
        os.rename(t, p)  # give up racing: raises the real error
    finally:
        for old in olds:
            _remove(old)


@contextlib.contextmanager
def atomic_outputs(paths: list[str]) -> Iterator[list[str]]:
    """Yield temporary paths for `paths`; on success rename them all into place (dirs too)."""
    paths = [os.fspath(p) for p in paths]
    for p in paths:
        check_writable(p)
    for d in dict.fromkeys(os.path.dirname(os.path.abspath(p)) for p in paths):
        clean_stale_temps(d)
    tmps = [temp_name(p) for p in paths]
    try:
        yield tmps
        for t in tmps:
            if os.path.isdir(t) and not os.path.islink(t):
                with open(os.path.join(t, DIR_MARK), "w") as f:  # replaceable by the next run
                    f.write("written by senet-hub; this directory is replaced by the next run that writes it\n")
            if os.path.exists(t):
                _fsync(t)
        slow = os.environ.get(SLOW_WRITE_ENV)
        if slow:  # test hook: a window in which the outputs are written but not yet renamed
            time.sleep(float(slow))
        for t, p in zip(tmps, paths):
            if os.path.isdir(t):
                _replace_dir(t, p)
            else:
                os.replace(t, p)
        for d in dict.fromkeys(os.path.dirname(os.path.abspath(p)) for p in paths):
            _fsync_dir(d)
    except OSError as e:
        name = paths[tmps.index(e.filename)] if e.filename in tmps else (e.filename or paths[0])
        raise OutputError(f"{name}: cannot write output: {e.strerror or e}; check the path and free space") from None
    finally:
        for t in tmps:
            if os.path.lexists(t):
                _remove(t)
