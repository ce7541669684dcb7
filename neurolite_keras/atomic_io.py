"""Atomic file writes: a reader sees the old file or the new one, never half
of either, and a failed write leaves the old file in place."""

import contextlib
import json
import os
import tempfile


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


# `mkstemp` creates files only their owner can read; a finished file gets
# the mode any new file gets under the umask (read once, at import: setting
# it to read it is not thread-safe).
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path, suffix=""):
    """Yields a temporary path beside `path`; moves it onto `path` on success.

    The temporary file lives in the destination folder so that the final
    `os.replace` is atomic. On any exception the temporary file is removed
    and `path` is untouched.

    Args:
        path: destination path. Its folder is created if missing.
        suffix: suffix of the temporary name (some writers, such as Keras'
            `model.save`, insist on an extension).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.",
        suffix=f".tmp{suffix}",
        dir=folder,
    )
    os.close(handle)
    try:
        yield temporary
        if os.path.isfile(temporary):
            os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_bytes(path, data):
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def save_model(model, path):
    """Saves a Keras model to `path` (`.keras`) atomically."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(
            f"A model file name must end in '.keras'. Received: {path!r}"
        )
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)
