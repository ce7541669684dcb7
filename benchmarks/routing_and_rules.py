"""Routing and rules on Banking77 (issue 6, items 5 and 8).

Run (from the repository root):

    KERAS_BACKEND=tensorflow nice -n 10 \\
        python benchmarks/routing_and_rules.py --data-dir /work/shared/data

`--quick` runs the same steps on a tenth of the data with one epoch, in a
few minutes, and writes nothing unless `--output-dir` is given.

What it measures, with one model recipe throughout: the `tiny` preset with
`max_sequence_length=32` (Banking77 texts: mean 14 tokens, 99th percentile
50) and 2 mixer layers instead of 4 (to fit the run into about half an
hour of two shared CPU cores), AdamW with one epoch of warm-up then cosine
decay (`neurolite_keras.recipes.train.make_optimizer`, peak 3e-3), a fixed
number of epochs and no early stopping, so both arms of each comparison
train exactly alike.

1. Routing, on the full training split (9,000 texts; the loader holds out
   a stratified tenth of the source's train file as dev): the same model
   with a mixture of experts of 4 experts, top-1, expert width 128, and
   with 1 expert of width 128 (no routing: its one expert takes every
   token with weight 1). A token uses the router and one expert in both,
   so the active parameters per token differ only by the 3 extra router
   columns (384 weights). Reported: total parameters, active parameters
   per token (`parameter_counts`, from the layers' weight shapes), test
   and dev accuracy, Keras batch-1 latency (`predict_on_batch` on
   featurized texts, both models timed side by side in one process, in
   random order each round; median over the rounds after warm-up) and
   expert usage: training (`ExpertUsageCallback`, last epoch) and test
   (`expert_usage`, the mean over test texts of each text's share of
   token assignments).
2. Rules in a low-data setting: a stratified 10% of the training split
   (seed 0), trained with and without the rule set of
   `benchmarks/rules/banking77_rules.json` (written by `derive_rules` from
   the label names and a few hand-written keywords; never from any data),
   same seeds, same everything else. Also the rules alone (the label with
   the most evidence, where any rule fires), and edits made after
   training (`EDITS`: add keywords, change a weight, remove a rule, add a
   rule; some written from the label meanings before any result, some
   after reading dev-set errors, none from the test split), each applied
   alone with `model.set_rules` and no retraining: how many test
   sentences the edit touches (their rule evidence changes) and how their
   predictions change.

Writes `routing_and_rules.md` (the tables the README includes) and
`routing_and_rules.json` into `--output-dir`, each atomically.

Last full run (default flags, TensorFlow, 2 CPU cores shared with other
jobs, load average 5.1 at the start and 4.1 at the end: 21.8 min; 29.6 min
at load 8-10; the figures were the same in both runs). Routing: 89.9%
test accuracy with 4 experts against 89.5% with 1 (dev 88.0% and 88.2%),
792,077 and 791,693 active parameters per token, batch-1 latency 9.4 and
8.9 ms. Rules, 899 training texts: 65.7% without, 68.5% with (dev 66.2%
and 69.4%); the rules alone 42.6%. Edits after training changed 0 to 4
test predictions each; the one rule added for a dev-set confusion
(`top_up_failed/did-not-go-through`) fixed 4 of the 15 test texts it
touches. One seed each: differences under a point are within noise.
"""

import argparse
import math
import os
import pathlib
import random
import statistics
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
RULES_PATH = HERE / "rules" / "banking77_rules.json"
OUTPUT_DIR = HERE / "results" / "routing_rules"

# The benchmark's model: `NeuroLiteConfig.tiny` with these overrides.
MODEL = {"max_sequence_length": 32, "num_mixer_layers": 2}
# The two routing arms: same width, same top-k, 4 experts or 1.
ROUTING_ARMS = {
    "routed": {"num_experts": 4, "num_experts_per_token": 1,
               "expert_size": 128},
    "one_expert": {"num_experts": 1, "num_experts_per_token": 1,
                   "expert_size": 128},
}  # fmt: skip
LOW_DATA_FRACTION = 0.1

# --- Rules: how banking77_rules.json is made ---------------------------------

STOP_WORDS = (
    "my", "or", "and", "to", "of", "by", "after", "on", "for", "into",
    "about", "via", "get", "getting", "why", "up",
)  # fmt: skip
# Pairs of name words read as one lexicon.
PHRASES = {("top", "up"): "top_up", ("topping", "up"): "top_up"}
SUFFIXES = ("ies", "ing", "ed", "es", "s", "al", "ion", "ance", "y", "e")
STEM_OVERRIDES = {
    "apple": "apple",  # Not appl*: apply, application.
    "recognised": "recogni*",  # Both spellings.
}
LEXICONS = {
    "top_up": [
        "top up", "top-up", "topup", "top ups", "top-ups", "topped up",
        "topping up",
    ],
    "negation": [
        "not", "no", "never", "hasn't", "hasnt", "haven't", "didn't",
        "didnt", "doesn't", "doesnt", "isn't", "isnt", "won't", "can't",
        "cannot", "wasn't",
    ],
}  # fmt: skip
HAND_KEYWORDS = {
    "apple_pay_or_google_pay": [
        "apple pay", "google pay", "android pay", "apple watch",
    ],
    "age_limit": ["how old", "years old", "child*", "kid*", "teen*"],
    "passcode_forgotten": ["forgot*", "forget*", "remember"],
    "lost_or_stolen_card": ["lost my card", "stole*", "misplaced"],
    "card_swallowed": ["ate my card", "machine kept", "machine took", "eaten"],
    "atm_support": ["cash machine", "cashpoint"],
    "transaction_charged_twice": [
        "twice", "double", "two times", "duplicate*",
    ],
    "getting_spare_card": [
        "another card", "second card", "additional card", "extra card",
    ],
    "change_pin": ["change my pin", "new pin", "reset my pin"],
    "country_support": ["abroad", "which countries", "overseas", "live in"],
    "visa_or_mastercard": ["master card", "card network"],
    "contactless_not_working": ["tap", "tapping", "nfc"],
    "card_arrival": [
        "arrive*", "still waiting", "track my card", "when will my card",
    ],
    "edit_personal_details": [
        "my address", "change my name", "my details", "phone number",
    ],
    "fiat_currency_support": ["crypto*", "bitcoin"],
}  # fmt: skip
OPPOSE_RULES = [
    {
        "name": "card_not_working/not-virtual",
        "label": "card_not_working",
        "weight": 0.5,
        "effect": "oppose",
        "when": {"any_keywords": ["virtual", "contactless"]},
    }
]

# Edits made after training, each applied alone to the trained rule set.
# "label meaning": written by hand from the label names before any result
# was seen. "dev errors": written by hand after reading the dev-set errors
# of the seed-0 model with rules and the dev texts each rule fires on
# (receiving_money/name-words, mone*, fired on 119 dev texts and was right
# on 3; transfer_into_account/name-words, account*, on 116 and 10); never
# from the test split.
EDITS = [
    {"edit": "change weight", "source": "label meaning",
     "rule": "card_arrival/hand", "weight": 0.95},
    {"edit": "remove rule", "source": "label meaning",
     "rule": "transaction_charged_twice/hand"},
    {
        "edit": "add rule", "source": "label meaning",
        "rule": {
            "name": "request_refund/money-back",
            "label": "request_refund",
            "weight": 0.8,
            "when": {"any_keywords": [
                "money back", "reimburse*", "get my money",
            ]},
        },
    },
    {"edit": "add keywords", "source": "dev errors",
     "rule": "reverted_card_payment?/name-words",
     "keywords": ["cancelled", "canceled"]},
    {"edit": "change weight", "source": "dev errors",
     "rule": "receiving_money/name-words", "weight": 0.05},
    {"edit": "remove rule", "source": "dev errors",
     "rule": "transfer_into_account/name-words"},
    {
        "edit": "add rule", "source": "dev errors",
        "rule": {
            "name": "top_up_failed/did-not-go-through",
            "label": "top_up_failed",
            "weight": 0.9,
            "when": {
                "any_keywords": [
                    "go through", "went through", "denied", "unsuccessful",
                ],
                "lexicon": "top_up",
            },
        },
    },
]  # fmt: skip


def _keyword(word):
    """The keyword a label-name word becomes (see `rules_description`)."""
    if word in STEM_OVERRIDES:
        return STEM_OVERRIDES[word]
    if len(word) <= 3:
        return word
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)] + "*"
    return word + "*"


def _name_parts(label):
    """(keywords, lexicons) of one label name."""
    words = [w for w in label.lower().strip("?").split("_") if w]
    keywords, lexicons, i = [], [], 0
    while i < len(words):
        phrase = PHRASES.get(tuple(words[i : i + 2]))
        if phrase is not None:
            lexicons.append(phrase)
            i += 2
            continue
        word = words[i]
        i += 1
        if word == "not":
            lexicons.append("negation")
        elif word not in STOP_WORDS and _keyword(word) not in keywords:
            keywords.append(_keyword(word))
    return keywords, lexicons


def rules_description():
    """How `derive_rules` works, in words: the rule file's `description`."""
    return [
        "Banking77 rules for benchmarks/routing_and_rules.py, written by its "
        "derive_rules(label_names) from the 77 label names and the "
        "hand-written keywords of that script; no text of any split was used.",
        "Label names are lower-cased, '?' removed and split on '_'. "
        + ", ".join(" ".join(p) for p in PHRASES)
        + " become the lexicon top_up and 'not' the lexicon negation; the "
        f"words {', '.join(STOP_WORDS)} are dropped. A word of 3 letters or "
        "fewer matches exactly (and, in name-words, its plural); a longer "
        f"word loses one suffix ({', '.join(SUFFIXES)}; only if 4 letters "
        "stay) and matches as a prefix (arrival: arriv*); exceptions: "
        + ", ".join(f"{k}: {v}" for k, v in STEM_OVERRIDES.items())
        + ".",
        "<label>/name-words (weight 0.5): any of the label's words that occur "
        "in the names of at most 2 labels. <label>/all-words (weight 0.8): "
        "all of the label's words, and an entry of its lexicon if the name "
        "has one; only for names with at least 2 such conditions and no 'or' "
        "(lost_or_stolen_card names alternatives). "
        "<label>/hand (weight 0.7): keywords written by hand from the "
        f"meaning of {len(HAND_KEYWORDS)} labels. "
        + " ".join(
            f"{r['name']} ({r['effect']}, {r['weight']}): "
            f"{', '.join(r['when']['any_keywords'])}."
            for r in OPPOSE_RULES
        ),
    ]


def derive_rules(label_names):
    """The benchmark's rule set, as a dict, from the label names alone."""
    parts = {label: _name_parts(label) for label in label_names}
    frequency = {}
    for keywords, _ in parts.values():
        for keyword in set(keywords):
            frequency[keyword] = frequency.get(keyword, 0) + 1
    rules = []
    for label in label_names:
        keywords, lexicons = parts[label]
        distinctive = []
        for keyword in keywords:
            if frequency[keyword] <= 2:
                distinctive.append(keyword)
                if not keyword.endswith("*"):
                    distinctive.append(keyword + "s")
        if distinctive:
            rules.append({
                "name": f"{label}/name-words", "label": label, "weight": 0.5,
                "when": {"any_keywords": distinctive},
            })  # fmt: skip
        alternatives = "or" in label.lower().split("_")
        if len(keywords) + bool(lexicons) >= 2 and not alternatives:
            when = {"all_keywords": keywords} if keywords else {}
            if lexicons:
                when["lexicon"] = (
                    lexicons[0] if len(lexicons) == 1 else lexicons
                )
            rules.append({
                "name": f"{label}/all-words", "label": label, "weight": 0.8,
                "when": when,
            })  # fmt: skip
        if label in HAND_KEYWORDS:
            rules.append({
                "name": f"{label}/hand", "label": label, "weight": 0.7,
                "when": {"any_keywords": list(HAND_KEYWORDS[label])},
            })  # fmt: skip
    rules += [dict(rule) for rule in OPPOSE_RULES]
    return {
        "version": 1,
        "description": rules_description(),
        "labels": list(label_names),
        "lexicons": {k: list(v) for k, v in LEXICONS.items()},
        "rules": rules,
    }


def load_rules(path=RULES_PATH, label_names=None):
    """The rule file as a `RuleSet`, checked against `label_names`."""
    from neurolite_keras.rules import RuleSet

    rules = RuleSet.from_json_file(path)
    if label_names is not None:
        rules.check_labels(label_names)
    return rules


def apply_edit(rules, edit):
    """A copy of `rules` with one `EDITS` entry applied."""
    kind = edit["edit"]
    if kind == "add rule":
        return rules.with_rule(edit["rule"])
    if kind == "remove rule":
        return rules.without_rule(edit["rule"])
    specs = {spec["name"]: spec for spec in rules.to_dict()["rules"]}
    if edit["rule"] not in specs:
        raise ValueError(f"EDITS: no rule named {edit['rule']!r}")
    spec = specs[edit["rule"]]
    if kind == "change weight":
        spec["weight"] = edit["weight"]
    elif kind == "add keywords":
        spec["when"]["any_keywords"] = spec["when"].get(
            "any_keywords", []
        ) + list(edit["keywords"])
    else:
        raise ValueError(f"EDITS: unknown edit {kind!r}")
    return rules.with_rule(spec)


def describe_edit(edit):
    if edit["edit"] == "add rule":
        rule = edit["rule"]
        words = ", ".join(rule["when"]["any_keywords"])
        if "lexicon" in rule["when"]:
            words += f", with a {rule['when']['lexicon']} word"
        return f"add rule `{rule['name']}` ({words}; {rule['weight']})"
    if edit["edit"] == "remove rule":
        return f"remove rule `{edit['rule']}`"
    if edit["edit"] == "change weight":
        return f"`{edit['rule']}` weight to {edit['weight']}"
    return f"`{edit['rule']}` + {', '.join(edit['keywords'])}"


# --- Data, parameters, training --------------------------------------------


def benchmark_config(**overrides):
    from neurolite_keras.config import NeuroLiteConfig

    return NeuroLiteConfig.tiny(**{**MODEL, **overrides})


def stratified_subset(split, fraction, seed=0):
    """A `fraction` of each label's examples of `split` (at least one)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: {fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(split.labels)
    chosen = []
    for label in sorted(set(split.labels)):
        members = np.flatnonzero(labels == label)
        count = max(1, int(round(len(members) * fraction)))
        chosen.extend(rng.permutation(members)[:count].tolist())
    return split.subset(sorted(chosen))


def _layers(layer):
    """`layer` and every layer nested in it, models included."""
    import keras

    yield layer
    if isinstance(layer, keras.Model):
        for inner in layer.layers:
            yield from _layers(inner)


def parameter_counts(model):
    """Trainable parameters in total and used per token, from weight shapes.

    A token goes through every layer, but in a `MixtureOfExperts` only
    through the router and its `num_experts_per_token` experts; the other
    experts' kernels and biases (their slices of the stacked weights) are
    not active. The hash table counts in full, as embeddings do in the
    usual count of active parameters. Non-trainable weights (the routing
    statistics) are not parameters.

    Returns:
        A dict: `total`, `active` (per token), and `moe_total`,
        `moe_active` for the mixture-of-experts layers alone (0 without).
    """
    from neurolite_keras.layers.routing import MixtureOfExperts

    def size(shape):
        return int(np.prod(shape)) if len(shape) else 1

    total = sum(size(w.shape) for w in model.trainable_weights)
    moe_total = moe_active = 0
    seen = set()
    for layer in _layers(model):
        if not isinstance(layer, MixtureOfExperts) or id(layer) in seen:
            continue
        seen.add(id(layer))
        stacked = (
            layer.expert_kernel_in, layer.expert_bias_in,
            layer.expert_kernel_out, layer.expert_bias_out,
        )  # fmt: skip
        num_experts = layer.expert_kernel_in.shape[0]
        per_expert = sum(size(w.shape[1:]) for w in stacked)
        router = size(layer.router_kernel.shape)
        moe_total += router + num_experts * per_expert
        moe_active += router + layer.num_experts_per_token * per_expert
    return {
        "total": total,
        "active": total - (moe_total - moe_active),
        "moe_total": moe_total,
        "moe_active": moe_active,
    }


def train(
    config,
    split,
    label_names,
    epochs,
    batch_size,
    seed=0,
    rules=None,
    learning_rate=3e-3,
    verbose=0,
    compile_options=None,
):
    """A classifier trained for exactly `epochs` epochs; `(model, info)`.

    `compile_options` go to `compile` (the tests run eagerly: tiny models
    train faster than they compile).
    """
    import keras

    from neurolite_keras.layers.routing import ExpertUsageCallback
    from neurolite_keras.models import NeuroLiteForClassification
    from neurolite_keras.recipes.train import make_optimizer

    keras.utils.set_random_seed(seed)
    model = NeuroLiteForClassification(
        config, label_names=label_names, rules=rules
    )
    features = model.featurize(split.texts)
    labels = model.encode_labels(split.labels)
    steps = math.ceil(len(split) / batch_size)
    model.compile(
        optimizer=make_optimizer(learning_rate, steps, epochs),
        **(compile_options or {}),
    )
    callbacks = [ExpertUsageCallback()] if config.use_dynamic_routing else []
    start = time.perf_counter()
    history = model.fit(
        features,
        {"logits": labels},
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        callbacks=callbacks,
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    logs = {key: values[-1] for key, values in history.history.items()}
    info = {
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / epochs, 1),
        "train_loss": round(float(logs["loss"]), 4),
        "train_accuracy": round(float(logs["accuracy"]), 4),
        "epochs": epochs,
        "batch_size": batch_size,
        "num_train_examples": len(split),
        "seed": seed,
    }
    if config.use_dynamic_routing:
        info["train_expert_usage"] = [
            round(float(logs[f"experts_expert_{i}"]), 4)
            for i in range(config.num_experts)
        ]
    return model, info


def accuracy(model, split):
    from neurolite_keras.evaluation import evaluate_predictor

    return round(evaluate_predictor(model, split, batch_size=256)["accuracy"],
                 4)  # fmt: skip


def batch1_latency(models, texts, repeats=50, warmup=5, seed=0):
    """Keras batch-1 latency of each model, timed side by side.

    Each model is called with `predict_on_batch` on one featurized text
    (featurizing is not timed). After `warmup` calls each, `repeats`
    rounds call every model once, in a new random order each round, so
    that load on a shared machine hits them alike.

    Returns:
        Per model name: `median_ms`, `p10_ms`, `p90_ms`, `min_ms`,
        `cpu_median_ms` (process CPU time, all threads) and `calls`.
    """
    inputs = {
        name: [model.featurize([text]) for text in texts]
        for name, model in models.items()
    }
    for name, model in models.items():
        for i in range(warmup):
            model.predict_on_batch(inputs[name][i % len(texts)])
    wall = {name: [] for name in models}
    cpu = {name: [] for name in models}
    order = list(models)
    rng = random.Random(seed)
    for round_index in range(repeats):
        rng.shuffle(order)
        for name in order:
            x = inputs[name][round_index % len(texts)]
            start, start_cpu = time.perf_counter(), time.process_time()
            models[name].predict_on_batch(x)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    result = {}
    for name in models:
        ms = sorted(1000.0 * t for t in wall[name])
        result[name] = {
            "median_ms": round(statistics.median(ms), 3),
            "p10_ms": round(ms[len(ms) // 10], 3),
            "p90_ms": round(ms[(9 * len(ms)) // 10], 3),
            "min_ms": round(ms[0], 3),
            "cpu_median_ms": round(
                statistics.median(1000.0 * t for t in cpu[name]), 3
            ),
            "calls": len(ms),
        }
    return result


# --- The two experiments -----------------------------------------------------


def routing_experiment(
    data,
    config=None,
    epochs=4,
    batch_size=64,
    seed=0,
    repeats=50,
    warmup=5,
    verbose=0,
    compile_options=None,
):
    """Routing against one expert, at equal active parameters per token."""
    config = config or benchmark_config()
    models, arms = {}, {}
    for name, sizes in ROUTING_ARMS.items():
        arm_config = config.copy(use_dynamic_routing=True, **sizes)
        print(f"[routing] training {name}: {sizes}", flush=True)
        model, info = train(
            arm_config,
            data.train,
            data.label_names,
            epochs,
            batch_size,
            seed=seed,
            verbose=verbose,
            compile_options=compile_options,
        )
        usage = model.backbone.expert_usage(data.test.texts).mean(axis=0)
        arms[name] = {
            **sizes,
            **parameter_counts(model),
            "test_accuracy": accuracy(model, data.test),
            "dev_accuracy": accuracy(model, data.dev),
            "test_expert_usage": [round(float(u), 4) for u in usage],
            **info,
        }
        models[name] = model
        print(f"[routing] {name}: {arms[name]}", flush=True)
    texts = random.Random(seed).sample(
        list(data.test.texts), min(50, len(data.test))
    )
    latency = batch1_latency(models, texts, repeats, warmup, seed)
    for name in arms:
        arms[name]["latency"] = latency[name]
    print(f"[routing] latency: {latency}", flush=True)
    return {"config": config.get_config(), "arms": arms}


def rules_alone(rules, split, label_names):
    """Accuracy of the rules by themselves: the label with the most
    evidence (support minus opposition) where some rule fires."""
    evidence = rules.evaluate(split.texts, label_names)
    score = evidence[:, 0] - evidence[:, 1]
    covered = evidence[:, 0].max(axis=1) > 0
    index = {name: i for i, name in enumerate(label_names)}
    truth = np.array([index[label] for label in split.labels])
    correct = (np.argmax(score, axis=1) == truth) & covered
    return {
        "coverage": round(float(covered.mean()), 4),
        "accuracy_where_fired": round(
            float(correct[covered].mean()) if covered.any() else 0.0, 4
        ),
        "accuracy": round(float(correct.mean()), 4),
    }


def edit_experiment(model, rules, split, edits=EDITS):
    """Applies each edit alone to a trained model's rules (no retraining)."""
    label_names = model.label_names
    index = {name: i for i, name in enumerate(label_names)}
    truth = np.array([index[label] for label in split.labels])
    texts = list(split.texts)

    def predictions(rule_set):
        # `featurize` evaluates the model's current rules.
        model.set_rules(rule_set)
        features = model.featurize(texts)
        logits = model.predict(features, batch_size=256, verbose=0)["logits"]
        return features["rule_evidence"], np.argmax(logits, axis=1)

    base_evidence, base = predictions(rules)
    results = []
    for edit in edits:
        edited = apply_edit(rules, edit)
        evidence, after = predictions(edited)
        affected = np.any(evidence != base_evidence, axis=(1, 2))
        changed = after != base
        examples = []
        for i in np.flatnonzero(changed & affected)[:3]:
            fired = edited.explain([texts[i]])[0]
            examples.append({
                "text": texts[i],
                "label": split.labels[i],
                "before": label_names[base[i]],
                "after": label_names[after[i]],
                "rules_fired": [rule["name"] for rule in fired],
            })  # fmt: skip
        n = int(affected.sum())
        results.append({
            "edit": edit,
            "description": describe_edit(edit),
            "affected": n,
            "changed": int(changed.sum()),
            "changed_unaffected": int((changed & ~affected).sum()),
            "correct_before": int((base == truth)[affected].sum()),
            "correct_after": int((after == truth)[affected].sum()),
            "test_accuracy_before": round(float((base == truth).mean()), 4),
            "test_accuracy_after": round(float((after == truth).mean()), 4),
            "examples": examples,
        })  # fmt: skip
        print(
            f"[edit] {results[-1]['description']}: affected {n}, "
            f"changed {int(changed.sum())}",
            flush=True,
        )
    model.set_rules(rules)
    return results


def rules_experiment(
    data,
    rules,
    config=None,
    fraction=LOW_DATA_FRACTION,
    epochs=25,
    batch_size=32,
    seeds=(0,),
    subset_seed=0,
    edits=EDITS,
    verbose=0,
    compile_options=None,
):
    """Low-data accuracy with and without rules, and edits after training."""
    config = config or benchmark_config()
    small = stratified_subset(data.train, fraction, subset_seed)
    runs = []
    edit_results = None
    scales = None
    for seed in seeds:
        run = {"seed": seed}
        for name, use_rules in (("without_rules", False), ("with_rules", True)):
            print(f"[rules] training {name}, seed {seed}, {len(small)} texts",
                  flush=True)  # fmt: skip
            model, info = train(
                config.copy(use_symbolic_module=use_rules),
                small,
                data.label_names,
                epochs,
                batch_size,
                seed=seed,
                rules=rules if use_rules else None,
                verbose=verbose,
                compile_options=compile_options,
            )
            run[name] = {
                "test_accuracy": accuracy(model, data.test),
                "dev_accuracy": accuracy(model, data.dev),
                "num_parameters": parameter_counts(model)["total"],
                **info,
            }
            print(f"[rules] {name}: {run[name]}", flush=True)
            if use_rules and edit_results is None:
                trust = model.get_layer("rules").rule_scales()
                scales = {
                    key: {
                        "mean": round(float(np.mean(values)), 4),
                        "min": round(float(np.min(values)), 4),
                        "max": round(float(np.max(values)), 4),
                    }
                    for key, values in trust.items()
                }
                edit_results = edit_experiment(model, rules, data.test, edits)
        runs.append(run)
    mean = {
        name: round(
            float(np.mean([run[name]["test_accuracy"] for run in runs])), 4
        )
        for name in ("without_rules", "with_rules")
    }
    return {
        "fraction": fraction,
        "subset_seed": subset_seed,
        "num_train_examples": len(small),
        "num_rules": len(rules),
        "config": config.get_config(),
        "runs": runs,
        "mean_test_accuracy": mean,
        "rules_alone": rules_alone(rules, data.test, data.label_names),
        "learned_rule_scales": scales,
        "edits": edit_results,
    }


# --- Output ------------------------------------------------------------------


def _pct(value):
    return f"{100.0 * value:.1f}"


def render_markdown(results):
    run = results["run"]
    routing, rules = results["routing"], results["rules"]
    arms = routing["arms"]
    lines = [
        f"Banking77 (test: {results['num_test_examples']:,} texts), backend "
        f"{run['backend']}, CPU, {run['minutes']} min on "
        f"{run['cpu_count']} cores (load average {run['load_average']}, "
        "from start to end). "
        "Model: tiny preset, max_sequence_length 32, 2 mixer layers.",
        "",
        f"### Routing at equal active parameters per token "
        f"({arms['routed']['num_train_examples']:,} training texts, "
        f"{arms['routed']['epochs']} epoch(s))",
        "",
        "| model | params | active params / token | expert block, "
        "total / active | test acc. % | dev acc. % | batch-1 latency, "
        "median ms (CPU ms) | expert usage, test tokens |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    names = {
        "routed": "4 experts, top-1, width {expert_size}",
        "one_expert": "1 expert (no routing), width {expert_size}",
    }
    for key, arm in arms.items():
        usage = " / ".join(f"{u:.2f}" for u in arm["test_expert_usage"])
        lines.append(
            f"| {names[key].format(**arm)} | {arm['total']:,} | "
            f"{arm['active']:,} | {arm['moe_total']:,} / "
            f"{arm['moe_active']:,} | {_pct(arm['test_accuracy'])} | "
            f"{_pct(arm['dev_accuracy'])} | {arm['latency']['median_ms']:.2f}"
            f" ({arm['latency']['cpu_median_ms']:.2f}) | {usage} |"
        )
    routed = arms["routed"]
    lines += [
        "",
        f"Latency: `predict_on_batch` on one featurized text, "
        f"{routed['latency']['calls']} calls per model, both models side by "
        "side. The experts run dense (every expert on every token, weighted "
        "by the top-k gates), so routing adds capacity, not speed. Training "
        "usage of the routed model (last epoch): "
        + " / ".join(f"{u:.2f}" for u in routed["train_expert_usage"])
        + ".",
        "",
        f"### Rules with {100 * rules['fraction']:g}% of the training data "
        f"({rules['num_train_examples']} texts, {rules['num_rules']} rules)",
        "",
        "| model | seed | test acc. % | dev acc. % |",
        "|---|---:|---:|---:|",
    ]
    for run_ in rules["runs"]:
        for name, label in (
            ("without_rules", "no rules"),
            ("with_rules", "with rules"),
        ):
            entry = run_[name]
            lines.append(
                f"| {label} | {run_['seed']} | "
                f"{_pct(entry['test_accuracy'])} | "
                f"{_pct(entry['dev_accuracy'])} |"
            )
    alone = rules["rules_alone"]
    mean = rules["mean_test_accuracy"]
    lines += [
        f"| rules alone (no network) | - | {_pct(alone['accuracy'])} | - |",
        "",
        f"Mean test accuracy: {_pct(mean['without_rules'])}% without rules, "
        f"{_pct(mean['with_rules'])}% with. The rules fire on "
        f"{_pct(alone['coverage'])}% of test texts and, alone, pick the "
        f"right label on {_pct(alone['accuracy_where_fired'])}% of those. "
        "Rule file: `benchmarks/rules/banking77_rules.json` (from the label "
        "names and a few hand-written keywords).",
        "",
        "### A rule edited after training, no retraining "
        f"(the with-rules model, seed {rules['runs'][0]['seed']})",
        "",
        "| edit | written from | test texts affected | predictions "
        "changed | correct among affected, before -> after | test acc. %, "
        "before -> after |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for edit in rules["edits"]:
        lines.append(
            f"| {edit['description']} | {edit['edit']['source']} | "
            f"{edit['affected']} | "
            f"{edit['changed']} | {edit['correct_before']} -> "
            f"{edit['correct_after']} | "
            f"{_pct(edit['test_accuracy_before'])} -> "
            f"{_pct(edit['test_accuracy_after'])} |"
        )
    stray = sum(edit["changed_unaffected"] for edit in rules["edits"])
    lines += [
        "",
        "Affected: test texts whose rule evidence the edit changes; no "
        "other prediction can change"
        + (", and none did." if not stray else f", yet {stray} did."),
    ]
    return "\n".join(lines) + "\n"


def write_results(results, output_dir):
    from neurolite_keras import atomic_io

    output_dir = pathlib.Path(output_dir)
    atomic_io.write_json(output_dir / "routing_and_rules.json", results)
    atomic_io.write_text(
        output_dir / "routing_and_rules.md", render_markdown(results)
    )
    return output_dir


def write_rule_file(label_names, path=RULES_PATH):
    from neurolite_keras import atomic_io

    atomic_io.write_json(path, derive_rules(label_names))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--output-dir",
        default=None,
        help=f"default: {OUTPUT_DIR} (none with --quick)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=4,
        help="epochs of the routing models (full data)",
    )
    parser.add_argument(
        "--low-data-epochs",
        type=int,
        default=25,
        help="epochs of the rules models (10%% of the data)",
    )
    parser.add_argument(
        "--seeds",
        default="0",
        help="comma-separated seeds of the rules comparison",
    )
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rules", default=str(RULES_PATH))
    parser.add_argument(
        "--write-rules",
        action="store_true",
        help="rewrite the rule file from derive_rules, exit",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tenth of the data, 1 epoch, 10 repeats",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="download Banking77 if it is not on disk",
    )
    parser.add_argument("--verbose", type=int, default=2)
    args = parser.parse_args(argv)

    import keras

    from neurolite_keras.datasets import load_dataset

    data = load_dataset(
        "banking77", data_dir=args.data_dir, download=args.download
    )
    if args.write_rules:
        print(f"wrote {write_rule_file(data.label_names, args.rules)}")
        return 0
    rules = load_rules(args.rules, data.label_names)
    seeds = [int(s) for s in args.seeds.split(",")]
    epochs, low_epochs = args.epochs, args.low_data_epochs
    repeats, warmup = args.repeats, args.warmup
    output_dir = args.output_dir or (None if args.quick else OUTPUT_DIR)
    if args.quick:
        data.train = stratified_subset(data.train, 0.1, seed=1)
        data.dev = stratified_subset(data.dev, 0.1, seed=1)
        data.test = stratified_subset(data.test, 0.1, seed=1)
        epochs, low_epochs, repeats, warmup = 1, 1, 10, 2
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    routing = routing_experiment(
        data,
        epochs=epochs,
        repeats=repeats,
        warmup=warmup,
        verbose=args.verbose,
    )
    rules_result = rules_experiment(
        data,
        rules,
        epochs=low_epochs,
        seeds=seeds,
        verbose=args.verbose,
    )
    results = {
        "run": {
            "backend": keras.backend.backend(),
            "keras": keras.__version__,
            "minutes": round((time.perf_counter() - start) / 60.0, 1),
            "cpu_count": os.cpu_count(),
            "load_average": f"{load_start:.1f} -> {os.getloadavg()[0]:.1f}",
            "quick": args.quick,
            "command": " ".join(
                [os.path.basename(sys.argv[0])]
                + (sys.argv[1:] if argv is None else list(argv))
            ),
        },
        "num_test_examples": len(data.test),
        "routing": routing,
        "rules": rules_result,
    }
    markdown = render_markdown(results)
    print(markdown)
    if output_dir is not None:
        print(f"wrote {write_results(results, output_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
