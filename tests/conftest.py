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
