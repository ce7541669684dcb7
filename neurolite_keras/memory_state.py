"""The episodic state of an `AssociativeMemory`: its layout, its checks, and
saving and loading it as a `.npz` file without pickle.

A state is a dict of five NumPy arrays (`E` episodic slots, learned key
width `K`, lexical key width `L`, `0` for a memory without lexical keys,
value width `D`):

| name | shape | dtype | meaning |
|---|---|---|---|
| `episodic_keys` | `(E, K + L)` | float32 | learned key, then lexical key |
| `episodic_values` | `(E, D)` | float32 | value read back from each slot |
| `episodic_labels` | `(E,)` | int32 | label of each slot, `-1` for none |
| `episodic_last_used` | `(E,)` | int32 | step of last use, `-1`: empty |
| `episodic_step` | `(1,)` | int32 | the memory's step counter |

A written slot's learned key (its first `K` columns) and lexical key (the
last `L`) are unit vectors. A slot is valid (readable) exactly when its
`episodic_last_used` is `>= 0`.
The layer's trained weights, its query center and token frequencies among
them, are not part of the state: a state is only meaningful for the model
that wrote it.
The same arrays are the layer's non-trainable weights, so they also travel
inside a `.keras` file, and they are the explicit state tensors of an
exported TFLite model.
"""

import os
import tempfile
import zipfile

import numpy as np

STATE_FIELDS = (
    "episodic_keys",
    "episodic_values",
    "episodic_labels",
    "episodic_last_used",
    "episodic_step",
)
FLOAT_FIELDS = ("episodic_keys", "episodic_values")
INT_FIELDS = ("episodic_labels", "episodic_last_used", "episodic_step")
# Written beside the arrays, so that a load can tell a memory state from any
# other `.npz` file and a later format from this one.
FORMAT_KEY = "neurolite_memory_state_format"
FORMAT_VERSION = 1
_INT32_MAX = np.iinfo(np.int32).max


def memory_state_shapes(
    num_episodic_slots, key_size, value_size, lexical_size=0
):
    """Returns `{name: shape}` of the state of a memory of these sizes
    (`lexical_size`: the width of the lexical part of its keys)."""
    return {
        "episodic_keys": (num_episodic_slots, key_size + lexical_size),
        "episodic_values": (num_episodic_slots, value_size),
        "episodic_labels": (num_episodic_slots,),
        "episodic_last_used": (num_episodic_slots,),
        "episodic_step": (1,),
    }


def empty_memory_state(
    num_episodic_slots, key_size, value_size, lexical_size=0
):
    """Returns the state of an empty memory: every slot invalid, step 0."""
    shapes = memory_state_shapes(
        num_episodic_slots, key_size, value_size, lexical_size
    )
    state = {}
    for name, shape in shapes.items():
        if name in FLOAT_FIELDS:
            state[name] = np.zeros(shape, "float32")
        elif name == "episodic_step":
            state[name] = np.zeros(shape, "int32")
        else:
            state[name] = np.full(shape, -1, "int32")
    return state


def _check_structure(state, where):
    """Checks names and dtype kinds; returns a dict of NumPy arrays."""
    if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
        raise ValueError(
            f"{where}: a memory state must be a dict of arrays. "
            f"Received: {type(state).__name__}"
        )
    names = set(state.keys())
    missing = [name for name in STATE_FIELDS if name not in names]
    unexpected = sorted(str(name) for name in names - set(STATE_FIELDS))
    if missing or unexpected:
        raise ValueError(
            f"{where}: the memory state must hold exactly the arrays "
            f"{list(STATE_FIELDS)}. Missing: {missing}; unexpected: "
            f"{unexpected}"
        )
    arrays = {}
    for name in STATE_FIELDS:
        value = state[name]
        if not isinstance(value, np.ndarray):
            # Backend tensors and lists convert; anything else fails here.
            try:
                value = np.asarray(value)
            except Exception as error:
                raise ValueError(
                    f"{where}: `{name}` could not be read as an array "
                    f"({type(value).__name__}: {error})"
                ) from None
        kind = value.dtype.kind
        if name in FLOAT_FIELDS and kind != "f":
            raise ValueError(
                f"{where}: `{name}` must hold floats (float32). "
                f"Received dtype {value.dtype}"
            )
        if name in INT_FIELDS and kind not in "iu":
            raise ValueError(
                f"{where}: `{name}` must hold integers (int32). "
                f"Received dtype {value.dtype}"
            )
        arrays[name] = value
    return arrays


def validate_memory_state(
    state,
    num_episodic_slots,
    key_size,
    value_size,
    num_labels=0,
    where="set_memory_state",
    lexical_size=0,
):
    """Checks a state against a memory's sizes; returns clean arrays.

    Checks the array names, dtypes (floating for keys and values, integer
    for the rest), shapes (the slot count first, as it is the most common
    mismatch), finiteness and value ranges. Returns new float32 / int32
    arrays; the input is not modified.

    Args:
        state: dict of arrays, as `AssociativeMemory.get_state()` returns.
        num_episodic_slots, key_size, value_size: int. The memory's sizes.
        num_labels: int. When positive, labels must be `-1` or below it.
        where: str. Named at the start of every error message.
        lexical_size: int. Width of the lexical part of the keys, `0` for
            a memory without lexical keys.

    Raises:
        ValueError: naming the array and what is wrong with it.
    """
    arrays = _check_structure(state, where)
    expected = memory_state_shapes(
        num_episodic_slots, key_size, value_size, lexical_size
    )
    for name in STATE_FIELDS[:-1]:
        slots = arrays[name].shape[0] if arrays[name].ndim else None
        if slots != num_episodic_slots:
            raise ValueError(
                f"{where}: `{name}` holds {slots} episodic slots; this "
                f"memory has num_episodic_slots={num_episodic_slots}. "
                f"Received shape {arrays[name].shape}"
            )
    clean = {}
    for name in STATE_FIELDS:
        value = arrays[name]
        if value.shape != expected[name]:
            detail = ""
            if name == "episodic_keys":
                detail = (
                    f" (learned key {key_size} + lexical key {lexical_size} "
                    "wide)"
                )
            raise ValueError(
                f"{where}: `{name}` must have shape {expected[name]}"
                f"{detail}. Received shape {value.shape}"
            )
        if name in FLOAT_FIELDS:
            if not np.all(np.isfinite(value)):
                raise ValueError(
                    f"{where}: `{name}` holds NaN or infinite values"
                )
            clean[name] = value.astype("float32")
        else:
            if value.size and (value.min() < -1 or value.max() > _INT32_MAX):
                raise ValueError(
                    f"{where}: `{name}` must hold values in [-1, "
                    f"{_INT32_MAX}]. Received min {value.min()}, "
                    f"max {value.max()}"
                )
            clean[name] = value.astype("int32")
    if clean["episodic_step"][0] < 0:
        raise ValueError(
            f"{where}: `episodic_step` must be >= 0. "
            f"Received {clean['episodic_step'][0]}"
        )
    if clean["episodic_last_used"].max() > clean["episodic_step"][0]:
        raise ValueError(
            f"{where}: `episodic_last_used` holds step "
            f"{clean['episodic_last_used'].max()}, after the memory's "
            f"`episodic_step` {clean['episodic_step'][0]}"
        )
    labels = clean["episodic_labels"]
    if num_labels and labels.max() >= num_labels:
        raise ValueError(
            f"{where}: `episodic_labels` holds label {labels.max()}; this "
            f"memory has num_labels={num_labels} (labels -1 to "
            f"{num_labels - 1})"
        )
    return clean


def save_memory_state(path, state):
    """Writes a memory state to `path` as an uncompressed `.npz` file.

    The file is written to a temporary file in the same folder and then
    moved over `path`, so a failed save leaves any previous file intact.
    The name is used as given (NumPy's habit of appending `.npz` does not
    apply). Only plain numeric arrays are written; nothing is pickled.

    Args:
        path: str or path-like. Destination file.
        state: dict of arrays, as `AssociativeMemory.get_state()` returns.

    Raises:
        ValueError: the state lacks an array, holds an unexpected one, or
            an array has the wrong dtype kind.
    """
    path = os.fspath(path)
    arrays = _check_structure(state, f"save_memory_state({path!r})")
    arrays[FORMAT_KEY] = np.array([FORMAT_VERSION], "int32")
    folder = os.path.dirname(os.path.abspath(path))
    handle, temp_path = tempfile.mkstemp(
        prefix=".memory-state-", suffix=".tmp", dir=folder
    )
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def load_memory_state(path):
    """Reads a memory state written by `save_memory_state`.

    Every array is read at once, with `allow_pickle=False`, so a truncated
    or corrupt file fails here rather than later. The state's sizes are
    checked when it is given to `AssociativeMemory.set_state`.

    Args:
        path: str or path-like.

    Returns:
        dict of NumPy arrays, the names of `STATE_FIELDS`.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a readable `.npz` memory state (corrupt,
            truncated, pickled, another kind of file, another format
            version); the message names the path.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No memory state file at {path!r}")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not an .npz archive")
        with data:
            arrays = {name: np.array(data[name]) for name in data.files}
    except (
        OSError,
        ValueError,
        EOFError,
        KeyError,
        zipfile.BadZipFile,
    ) as error:
        raise ValueError(
            f"Could not read the memory state file {path!r}: it is "
            f"truncated, corrupt or not a NeuroLite memory state ({error})"
        ) from None
    version = arrays.pop(FORMAT_KEY, None)
    if version is None:
        raise ValueError(
            f"{path!r} is an .npz file but not a NeuroLite memory state "
            f"(it has no `{FORMAT_KEY}` entry); arrays found: "
            f"{sorted(arrays)}"
        )
    if version.shape != (1,) or int(version[0]) != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} holds memory state format {version.tolist()}; this "
            f"version of NeuroLite reads format {FORMAT_VERSION}"
        )
    _check_structure(arrays, f"load_memory_state({path!r})")
    return arrays
