# ruff: noqa: E402  (notebook: imports follow the backend choice)
# %% [markdown]
# # Memory, routing and rules
#
# NeuroLite has three optional modules, each switched on by a config flag:
#
# - `use_external_memory`: an associative memory (modern Hopfield
#   retrieval) with learned long-term slots and episodic slots written at
#   inference, so an app can teach the model new examples without
#   retraining, keep them across restarts, and see what a query recalled;
# - `use_dynamic_routing`: a mixture of small expert MLPs with per-token
#   gating and a load-balancing loss, whose usage you can read;
# - `use_symbolic_module`: rules declared as plain data (keywords, lexicons,
#   regular expressions, negation) whose evidence enters the network
#   through a learned soft-logic layer; rules can be edited after training.
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
SMALL = os.environ.get("NEUROLITE_SMALL") == "1"
os.environ.setdefault("KERAS_BACKEND", "jax")

# %%
import keras
import numpy as np

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteForClassification
from neurolite_keras import NeuroLiteModel
from neurolite_keras.datasets import load_sib200
from neurolite_keras.layers.routing import ExpertUsageCallback
from neurolite_keras.rules import RuleSet

keras.utils.set_random_seed(0)
LENGTH = 32 if SMALL else 64
print("backend:", keras.backend.backend(), "| small run:", SMALL)

# %% [markdown]
# ## Memory, as in the original description
#
# `model(input_texts=[...], update_memory=True)` writes the texts into
# episodic slots; later calls read them. `recall` says which written text a
# query retrieves and with what weight. This backbone is untrained, so
# retrieval follows shared character n-grams; training shapes the keys.

# %%
config = NeuroLiteConfig.tiny(max_sequence_length=LENGTH)
config.use_external_memory = True
backbone = NeuroLiteModel(config)
backbone(
    input_texts=["Alice est une ingénieure qui vit à Paris."],
    update_memory=True,
)
backbone(
    input_texts=["Le train pour Marseille part à midi."], update_memory=True
)
for text, slot, weight in backbone.recall(["Où vit Alice ?"], top_k=2)[0]:
    print(f"slot {slot}  weight {weight:.3f}  {text}")

# %% [markdown]
# ## A classifier with all three modules
#
# Rules are plain data; this small set was written from three label names.
# The model is trained on French SIB-200 sentences; `ExpertUsageCallback`
# records each expert's share of the tokens per epoch.

# %%
rules = RuleSet.from_dict(
    {
        "negation": {"cues": ["pas", "jamais", "ni"], "scope": 3},
        "rules": [
            {
                "name": "sport",
                "label": "sports",
                "weight": 0.6,
                "when": {
                    "any_keywords": ["match", "football", "équipe", "joueur*"]
                },
            },
            {
                "name": "politique",
                "label": "politics",
                "weight": 0.6,
                "when": {
                    "any_keywords": [
                        "élection*",
                        "parlement",
                        "ministre",
                        "président",
                    ]
                },
            },
            {
                "name": "sante",
                "label": "health",
                "weight": 0.6,
                "when": {
                    "any_keywords": ["santé", "vaccin*", "malad*", "médecin*"]
                },
            },
        ],
    }
)
data = load_sib200(languages=["fra_Latn"])
train, test = data.train, data.test
if SMALL:
    train, test = train.subset(range(64)), test.subset(range(32))

config = NeuroLiteConfig.tiny(
    max_sequence_length=LENGTH,
    use_external_memory=True,
    use_dynamic_routing=True,
    use_symbolic_module=True,
    num_experts=4,
)
model = NeuroLiteForClassification(
    config, label_names=data.label_names, rules=rules
)
model.compile()
history = model.fit(
    train.texts,
    train.labels,
    epochs=1 if SMALL else 10,
    batch_size=32,
    verbose=0,
    callbacks=[ExpertUsageCallback()],
)
accuracy = model.evaluate(test.texts, test.labels, verbose=0, return_dict=True)[
    "accuracy"
]
print(f"test accuracy {accuracy:.3f}")
print(
    "expert shares, last epoch:",
    [round(history.history[f"experts_expert_{i}"][-1], 3) for i in range(4)],
)

# %% [markdown]
# ## What a prediction used
#
# `explain` gives, per text, the top labels, the rules that fired (and on
# which words), each expert's share of the tokens, and the recalled slots.

# %%
for result in model.explain(
    [
        "Le match de football a été reporté.",
        "Ce n'est pas une maladie grave, selon le médecin.",
    ],
    top_k=2,
):
    print(result["text"])
    print("  labels:", result["labels"])
    print("  rules:", [(r["name"], r["matched"]) for r in result["rules"]])
    print("  experts:", result["experts"])

# %% [markdown]
# ## Editing knowledge without retraining
#
# A rule added after training changes the prediction at once; removing it
# restores it. Labelled sentences written into episodic memory vote for
# their label; the memory's state saves to `.npz` and loads back.

# %%
query = "Le festival de cinéma de Cannes ouvre ses portes."
index = model.label_names.index("entertainment")
before = model.predict_proba([query])[0, index]
model.set_rules(
    model.rules.with_rule(
        {
            "name": "cinema",
            "label": "entertainment",
            "weight": 0.9,
            "when": {"any_keywords": ["cinéma", "festival", "film*"]},
        }
    )
)
with_rule = model.predict_proba([query])[0, index]
model.set_rules(model.rules.without_rule("cinema"))
print(
    f"P(entertainment): {before:.3f}, with the rule {with_rule:.3f}, "
    f"without it again {model.predict_proba([query])[0, index]:.3f}"
)
assert with_rule > before

examples = [
    t
    for t, label in zip(data.train.texts, data.train.labels)
    if label == "entertainment"
][:3]
model.write_memory(examples, ["entertainment"] * 3)
written = model.predict_proba([query])[0, index]
print(f"after writing 3 labelled sentences: {written:.3f}")
model.save_memory_state("memory.npz")
model.reset_memory()
model.load_memory_state("memory.npz")
assert np.isclose(model.predict_proba([query])[0, index], written, atol=1e-5)
print("memory state saved, emptied and restored")

# %% [markdown]
# Rules and the memory's slot texts travel inside the `.keras` file, so a
# reloaded model explains itself the same way. See the README's results
# for what the modules bring on real data.
