# ruff: noqa: E402  (notebook: imports follow the backend choice)
# %% [markdown]
# # Switching backends with `KERAS_BACKEND`
#
# NeuroLite is written against Keras 3 only (`keras.ops`, no TensorFlow,
# JAX or PyTorch calls in the layers), so the same code trains under the
# three backends. The backend is read once, when Keras is first imported:
# set the environment variable `KERAS_BACKEND` before that import. In a
# notebook, one kernel therefore runs one backend; here each backend runs
# the same small script in its own process.
#
# The script trains NeuroLite-tiny on French SIB-200 sentences with a fixed
# seed, saves it, and loads the model saved by the previous backend to
# check that it predicts the same there: a `.keras` file does not depend
# on the backend that wrote it.
#
# Data: `NEUROLITE_DATA_DIR`, else a one-time checked download.

# %%
# Install the kit (skipped when NEUROLITE_SKIP_INSTALL=1, as in the tests).
import os
import subprocess
import sys

if os.environ.get("NEUROLITE_SKIP_INSTALL") != "1":
    subprocess.check_call(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "neurolite-keras[export]",
        ]
    )

# %%
import importlib.util
import json
import pathlib

SMALL = os.environ.get("NEUROLITE_SMALL") == "1"
backends = [
    name
    for name, module in (
        ("tensorflow", "tensorflow"),
        ("jax", "jax"),
        ("torch", "torch"),
    )
    if importlib.util.find_spec(module) is not None
]
print("installed backends:", backends, "| small run:", SMALL)

# %% [markdown]
# ## The script each backend runs
#
# It is ordinary NeuroLite code; nothing in it names a backend.

# %%
SCRIPT = """
import json, sys, time
import keras
import numpy as np
from neurolite_keras import NeuroLiteConfig, NeuroLiteForClassification
from neurolite_keras import load_model
from neurolite_keras.datasets import load_sib200

out, previous, small = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
keras.utils.set_random_seed(0)
data = load_sib200(languages=["fra_Latn"])
train = data.train.subset(range(64)) if small else data.train
probe = data.test.texts[:8]
config = NeuroLiteConfig.tiny(max_sequence_length=32 if small else 64)
model = NeuroLiteForClassification(config, label_names=data.label_names)
model.compile()
start = time.perf_counter()
model.fit(train.texts, train.labels, epochs=1 if small else 5, verbose=0)
seconds = time.perf_counter() - start
accuracy = model.evaluate(data.test.texts[:64], data.test.labels[:64],
                          verbose=0, return_dict=True)["accuracy"]
model.save(out + ".keras")
np.save(out + ".npy", model.predict_proba(probe))
report = {"backend": keras.backend.backend(), "train_seconds": seconds,
          "accuracy_64_test": accuracy}
if previous != "-":
    # The model another backend saved, loaded and run here.
    theirs = load_model(previous + ".keras").predict_proba(probe)
    report["loaded"] = previous
    report["max_difference"] = float(np.abs(theirs - np.load(
        previous + ".npy")).max())
print(json.dumps(report))
"""
pathlib.Path("train_and_save.py").write_text(SCRIPT, encoding="utf-8")

# %% [markdown]
# ## Run it under each backend
#
# `KERAS_BACKEND` goes into the environment of each process.

# %%
reports, previous = [], "-"
for backend in backends:
    env = dict(os.environ, KERAS_BACKEND=backend)
    completed = subprocess.run(
        [
            sys.executable,
            "train_and_save.py",
            f"model_{backend}",
            previous,
            "1" if SMALL else "0",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        print(completed.stderr[-2000:])
        raise RuntimeError(f"the {backend} run failed")
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    reports.append(report)
    previous = f"model_{backend}"
    print(report)

# %% [markdown]
# Each line says which backend ran, how long training took, and, from the
# second backend on, the largest difference between the probabilities the
# previous backend computed and those its saved model gives here (float32
# rounding, about 1e-6).

# %%
for report in reports[1:]:
    assert report["max_difference"] < 1e-4, report
print("every model loaded under another backend predicts the same")

# %% [markdown]
# In your own notebook, pick the backend in the first cell:
#
# ```python
# import os
# os.environ["KERAS_BACKEND"] = "torch"   # or "jax", "tensorflow"
# import keras
# ```
#
# Exporting to TFLite needs TensorFlow; the export recipe switches to it by
# itself in a subprocess, so a model trained under JAX or PyTorch exports
# without changing anything (`03_qat_tflite`).
