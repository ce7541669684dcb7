import importlib.util
import os
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# Tests read the local copy of the data sets; a user's NEUROLITE_DATA_DIR
# wins, else the shared folder beside the checkout.
os.environ.setdefault(
    "NEUROLITE_DATA_DIR", str(REPO.parent / "shared" / "data")
)


def load_script(path):
    """The Python file at `path` (a benchmark or build script, not part of
    the package) imported as a module named after it."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    np.random.seed(0)


@pytest.fixture
def data_dir():
    path = pathlib.Path(os.environ["NEUROLITE_DATA_DIR"])
    if not (path / "sib200").is_dir():
        pytest.skip(f"data sets not found under {path}")
    return path
