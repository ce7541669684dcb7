# ruff: noqa: E402  (notebook: imports follow the backend choice)
# %% [markdown]
# # NeuroLite quick start: train a text classifier and predict
#
# NeuroLite models read raw text with no vocabulary: each token's character
# n-grams are hashed into a counting Bloom filter, and an all-MLP backbone
# (no attention) classifies the result. NeuroLite-tiny has about one
# million parameters.
#
# In this notebook you train NeuroLite-tiny on French SIB-200 sentences
# (7 topics), evaluate it, classify new sentences, and save and reload it.
# It runs on a CPU runtime in a few minutes.
#
# Data: the loaders read `NEUROLITE_DATA_DIR` when it names a folder holding
# `sib200/`; otherwise they download the files once from the SIB-200
# repository, check their SHA-256 sums, and cache them.

# %%
# Install the kit. Colab already has TensorFlow, JAX and PyTorch; the
# `export` extra adds the LiteRT interpreter. From a checkout of the
# repository, `pip install -e ".[export]"` does the same. The test suite
# sets NEUROLITE_SKIP_INSTALL=1 to skip this cell.
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

# %% [markdown]
# ## Settings
#
# `NEUROLITE_SMALL=1` shrinks the run (fewer sentences, one epoch) so the
# test suite can execute the notebook quickly. The backend is chosen with
# `KERAS_BACKEND` before Keras is imported (see the next notebook).

# %%
SMALL = os.environ.get("NEUROLITE_SMALL") == "1"
os.environ.setdefault("KERAS_BACKEND", "jax")

# %%
import keras
import numpy as np

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteForClassification
from neurolite_keras import load_model
from neurolite_keras.datasets import load_sib200

keras.utils.set_random_seed(0)
EPOCHS = 1 if SMALL else 15
print("backend:", keras.backend.backend(), "| small run:", SMALL)

# %% [markdown]
# ## Data
#
# SIB-200 French: 701 training, 99 dev and 204 test sentences, each
# labelled with one of seven topics.

# %%
data = load_sib200(languages=["fra_Latn"])
train, dev, test = data.train, data.dev, data.test
if SMALL:
    train, dev, test = (
        train.subset(range(64)),
        dev.subset(range(16)),
        test.subset(range(32)),
    )
print(len(train), "train /", len(dev), "dev /", len(test), "test sentences")
print("labels:", data.label_names)
print("example:", train.texts[0], "->", train.labels[0])

# %% [markdown]
# ## Model and training
#
# `fit` takes the raw strings and the label names; batches are featurized
# on the fly, the same way on every backend. `compile()` with no
# arguments picks AdamW, cross-entropy on the logits and accuracy.

# %%
config = NeuroLiteConfig.tiny()
if SMALL:
    config.max_sequence_length = 32
model = NeuroLiteForClassification(config, label_names=data.label_names)
model.compile()
print(f"{model.count_params():,} parameters")
history = model.fit(
    train.texts,
    train.labels,
    validation_data=(dev.texts, dev.labels),
    epochs=EPOCHS,
    batch_size=32,
    verbose=2,
)

# %% [markdown]
# ## Evaluate and predict

# %%
results = model.evaluate(test.texts, test.labels, verbose=0, return_dict=True)
print(
    f"test accuracy {results['accuracy']:.3f} "
    f"(chance {1 / model.num_labels:.3f})"
)

sentences = [
    "L'équipe de France a gagné la finale hier soir.",
    "Le gouvernement a présenté son budget au parlement.",
    "Ce nouveau vaccin protège mieux les personnes âgées.",
]
for text, best in zip(sentences, model.classify(sentences, top_k=2)):
    print(text, "->", ", ".join(f"{label} {p:.2f}" for label, p in best))

# %% [markdown]
# ## Save and reload
#
# A `.keras` file holds the weights and the whole configuration, featurizer
# settings and label names included, so it predicts on raw text after
# loading, in this process or another, under any backend.

# %%
model.save("quick_start.keras")
reloaded = load_model("quick_start.keras")
same = np.allclose(
    model.predict_proba(sentences), reloaded.predict_proba(sentences), atol=1e-5
)
print("reloaded model predicts the same:", same)
assert same

# %% [markdown]
# Next: `02_switching_backends` runs this under TensorFlow, JAX and PyTorch,
# `03_qat_tflite` exports a model to int8 TFLite for a phone, and
# `04_memory_routing_rules` shows the optional modules. The command line
# does the full job in one step: `neurolite train --dataset sib200
# --preset tiny --epochs 30 --output runs/sib200-tiny`.
