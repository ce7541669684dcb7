# ruff: noqa: E402  (notebook: imports follow the backend choice)
# %% [markdown]
# # From Keras to a phone: QAT, int8 TFLite and LiteRT inference
#
# A NeuroLite model is meant to run on a phone. This notebook trains a
# small classifier, fine-tunes it with fake int8 weights
# (quantization-aware training, on whichever backend is active), exports it
# to a full-integer `.tflite` file that uses only TFLite built-in
# operators, and classifies raw text with the `ai-edge-litert` interpreter,
# with no Keras model in the loop.
#
# Data: `NEUROLITE_DATA_DIR`, else a one-time checked download.

# %%
# Install the kit with the exporter and the LiteRT interpreter (skipped
# when NEUROLITE_SKIP_INSTALL=1, as in the tests).
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
SMALL = os.environ.get("NEUROLITE_SMALL") == "1"
os.environ.setdefault("KERAS_BACKEND", "jax")

# %%
import time

import keras
import numpy as np

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteForClassification
from neurolite_keras.datasets import load_sib200
from neurolite_keras.litert_runner import LiteRTClassifier
from neurolite_keras.recipes.export import export_model
from neurolite_keras.tflite_ops import operator_counts

keras.utils.set_random_seed(0)
print("backend:", keras.backend.backend(), "| small run:", SMALL)

# %% [markdown]
# ## A model to ship
#
# Three SIB-200 languages (one in the small run), trained briefly.

# %%
languages = ["fra_Latn"] if SMALL else ["fra_Latn", "eng_Latn", "deu_Latn"]
data = load_sib200(languages=languages)
train, test = data.train, data.test
if SMALL:
    train, test = train.subset(range(64)), test.subset(range(32))
config = NeuroLiteConfig.tiny(max_sequence_length=32 if SMALL else 64)
model = NeuroLiteForClassification(config, label_names=data.label_names)
model.compile()
model.fit(
    train.texts,
    train.labels,
    epochs=1 if SMALL else 10,
    batch_size=32,
    verbose=2,
)
model.save("classifier.keras")

# %% [markdown]
# ## Export: int8 with quantization-aware training
#
# `export_model` fine-tunes with fake-quantized weights for `qat_epochs`
# (here distilling the float model's own predictions), calibrates the
# activation ranges on real sentences, converts with built-in operators
# only, and writes `classifier_int8.tflite` with its sidecar
# `classifier_int8.tflite.json` (featurizer settings, label names, golden
# featurizer vectors). It records how closely the TFLite model follows the
# Keras one on the validation texts. The conversion itself runs on
# TensorFlow, in a subprocess when another backend is active.

# %%
start = time.perf_counter()
int8 = export_model(
    "classifier.keras",
    "classifier_int8.tflite",
    quantization="int8",
    qat_epochs=1,
    train_texts=train.texts,
    train_labels=train.labels,
    calibration_texts=train.texts,
    validation_texts=test.texts,
    validation_labels=test.labels,
)
print(
    f"int8: {int8.size_bytes / 1e6:.2f} MB in "
    f"{time.perf_counter() - start:.0f} s"
)
print(
    "parity with Keras:",
    {
        key: value
        for key, value in int8.parity.items()
        if key in ("top1_agreement", "keras_accuracy", "tflite_accuracy")
    },
)

float32 = export_model(
    "classifier.keras",
    "classifier_float32.tflite",
    quantization="float32",
    validation_texts=test.texts,
)
print(
    f"float32: {float32.size_bytes / 1e6:.2f} MB, largest logit "
    f"difference {float32.parity['max_abs_logit_difference']:.1e}"
)

# %% [markdown]
# ## Only built-in operators
#
# A phone's TFLite runtime has no Flex (select TensorFlow) ops; the export
# checks this and fails otherwise. Here is what the int8 file uses.

# %%
with open("classifier_int8.tflite", "rb") as file:
    counts = operator_counts(file.read())
for operator, count in sorted(counts.items(), key=lambda item: -item[1]):
    print(f"{operator.name:20s} {count}")

# %% [markdown]
# ## LiteRT inference on raw text
#
# `LiteRTClassifier` needs only the `.tflite` file, its sidecar, NumPy and
# `ai-edge-litert`: it featurizes the text as the model expects (and checks
# the featurizer against the golden vectors first), then runs the
# interpreter one text at a time. An app does the same with a port of the
# featurizer.

# %%
runner = LiteRTClassifier("classifier_int8.tflite")
sentences = [
    "Le club a remporté le championnat après une saison difficile.",
    "The minister announced new elections for next spring.",
]
for text, best in zip(sentences, runner.classify(sentences, top_k=2)):
    print(text, "->", ", ".join(f"{label} {p:.2f}" for label, p in best))

keras_top = model.predict_proba(test.texts).argmax(axis=1)
tflite_top = runner.predict_proba(test.texts).argmax(axis=1)
print(
    f"int8 TFLite agrees with Keras on "
    f"{np.mean(keras_top == tflite_top):.1%} of {len(test)} test texts"
)

start = time.perf_counter()
runner.predict_proba(test.texts[:16])
print(
    f"{(time.perf_counter() - start) / 16 * 1000:.1f} ms per text, "
    "featurizer included, one thread"
)

# %% [markdown]
# To ship: copy `classifier_int8.tflite` and `classifier_int8.tflite.json`
# into the app. From the command line, the same export is
# `neurolite export classifier.keras --quantization int8 --qat-epochs 1`.
