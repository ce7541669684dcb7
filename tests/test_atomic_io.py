import json
import os
import stat

import pytest

from neurolite_keras import atomic_io


def test_a_written_file_gets_the_umask_mode(tmp_path):
    path = tmp_path / "report.json"
    atomic_io.write_json(path, {"accuracy": 0.5})
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    atomic_io.write_json(path, {"run": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_io.atomic_path(path) as temporary:
            with open(temporary, "w") as file:
                file.write('{"run": 2')
            raise RuntimeError("disk full")
    assert json.loads(path.read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_save_model_needs_the_keras_suffix(tmp_path):
    with pytest.raises(ValueError, match="model.h5"):
        atomic_io.save_model(None, tmp_path / "model.h5")
