"""External memory, dynamic routing and symbolic rules, end to end.

Run (from the repository root, any backend):

    python examples/memory_and_routing_example.py           # 10 epochs
    python examples/memory_and_routing_example.py --quick   # 1 epoch

1. The original description's memory example on the backbone: texts written
   with `model(input_texts=[...], update_memory=True)`, and which of them a
   later question recalls, with the retrieval weights.
2. A classifier with the three modules on (associative memory, a mixture of
   experts, a keyword rule set), trained on French SIB-200 sentences with
   `fit` on raw strings, expert usage recorded during training.
3. What each prediction used: top labels, the rules that fired, each
   expert's share of the tokens, and the memory slots recalled.
4. Knowledge edited after training, with no retraining: a rule added then
   removed, and labelled sentences written into episodic memory, whose
   state is saved to `.npz` and restored.

Data: `--data-dir` or `NEUROLITE_DATA_DIR`, else the loaders' checked
one-time download. `--quick` trains on 64 sentences for one epoch with
32-token inputs: it shows the mechanics, not the accuracy.
"""

import argparse
import os

import keras
import numpy as np

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteForClassification
from neurolite_keras import NeuroLiteModel
from neurolite_keras import load_model
from neurolite_keras.atomic_io import save_model
from neurolite_keras.datasets import load_sib200
from neurolite_keras.layers.routing import ExpertUsageCallback

RULES = {
    "negation": {"cues": ["pas", "jamais", "ni", "not", "no"], "scope": 3},
    "rules": [
        {
            "name": "sport",
            "label": "sports",
            "weight": 0.6,
            "when": {
                "any_keywords": [
                    "match",
                    "football",
                    "équipe",
                    "championnat",
                    "joueur*",
                    "olympi*",
                ]
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
                    "président",
                    "gouvernement",
                    "ministre",
                    "vote*",
                ]
            },
        },
        {
            "name": "sante",
            "label": "health",
            "weight": 0.6,
            "when": {
                "any_keywords": [
                    "santé",
                    "vaccin*",
                    "hôpital",
                    "malad*",
                    "patient*",
                    "médecin*",
                ]
            },
        },
    ],
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--quick", action="store_true", help="64 sentences, 1 epoch, 32 tokens"
    )
    parser.add_argument("--data-dir", help="folder holding sib200/")
    parser.add_argument(
        "--output",
        default="runs/memory_and_routing",
        help="folder for the model and the memory state",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.quick:
        args.epochs = 1
    return args


def show(result):
    """Prints one `explain` result."""
    labels = ", ".join(f"{label} {p:.2f}" for label, p in result["labels"])
    print(f"  {result['text']}\n    labels: {labels}")
    fired = [
        f"{r['name']} ({r['effect']} {r['label']}, matched "
        f"{'/'.join(r['matched'])})"
        for r in result.get("rules", [])
    ]
    print(f"    rules fired: {', '.join(fired) or 'none'}")
    shares = " ".join(f"{s:.0%}" for s in result.get("experts", []))
    print(f"    experts' share of tokens: {shares}")
    for text, slot, weight in result.get("memory", []):
        print(f"    recalls slot {slot} (weight {weight:.2f}): {text!r}")


def seed_memory_example(length):
    print("\n1. The backbone's memory, as in the original description")
    config = NeuroLiteConfig.tiny(max_sequence_length=length)
    config.use_external_memory = True
    model = NeuroLiteModel(config)
    facts = [
        "Alice est une ingénieure qui vit à Paris depuis 2019.",
        "Le train pour Marseille part à midi.",
        "Le musée ferme le lundi.",
    ]
    for fact in facts:
        model(input_texts=[fact], update_memory=True)
        print(f"  wrote: {fact}")
    question = "Où vit Alice, l'ingénieure ?"
    outputs = model(input_texts=[question])
    print(f"  read: {question} -> token vectors {tuple(outputs.shape)}")
    for text, slot, weight in model.recall([question], top_k=3)[0]:
        print(f"    recalls slot {slot} with weight {weight:.3f}: {text!r}")
    print(
        "  (random weights: retrieval here follows shared character "
        "n-grams; training shapes the keys)"
    )


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    length = 32 if args.quick else 64
    print(f"Backend: {keras.backend.backend()}")
    seed_memory_example(length)

    print("\n2. A classifier with memory, experts and rules")
    data = load_sib200(args.data_dir, languages=["fra_Latn"])
    train, test = data.train, data.test
    if args.quick:
        train, test = train.subset(range(64)), test.subset(range(32))
    config = NeuroLiteConfig.tiny(
        max_sequence_length=length,
        use_external_memory=True,
        use_dynamic_routing=True,
        use_symbolic_module=True,
        num_experts=4,
    )
    model = NeuroLiteForClassification(
        config, label_names=data.label_names, rules=RULES
    )
    model.compile()
    history = model.fit(
        train.texts,
        train.labels,
        epochs=args.epochs,
        batch_size=32,
        verbose=0,
        callbacks=[ExpertUsageCallback()],
    )
    usage = [
        history.history[f"experts_expert_{i}"][-1]
        for i in range(config.num_experts)
    ]
    accuracy = model.evaluate(
        test.texts, test.labels, verbose=0, return_dict=True
    )["accuracy"]
    print(
        f"  {model.count_params():,} parameters, {len(train)} sentences, "
        f"{args.epochs} epoch(s); test accuracy {accuracy:.3f}"
    )
    print(
        "  experts' share of training tokens in the last epoch: "
        + " ".join(f"{u:.0%}" for u in usage)
    )
    test_usage = model.backbone.expert_usage(test.texts).mean(axis=0)
    print(
        "  experts' share of test tokens: "
        + " ".join(f"{u:.0%}" for u in test_usage)
    )

    print("\n3. What each prediction used")
    sentences = [
        "Le match de football a été reporté à cause de la pluie.",
        "Le ministre a présenté la réforme au parlement.",
        "Ce n'est pas une maladie grave, selon le médecin.",
    ]
    for result in model.explain(sentences, top_k=2):
        show(result)

    print("\n4. Editing knowledge after training (no retraining)")
    query = "Le festival de cinéma de Cannes ouvre ses portes."
    before = model.predict_proba([query])[0]
    entertainment = model.label_names.index("entertainment")
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
    after = model.predict_proba([query])[0]
    print(
        f"  rule 'cinema' added: P(entertainment | {query!r}) "
        f"{before[entertainment]:.3f} -> {after[entertainment]:.3f}"
    )
    model.set_rules(model.rules.without_rule("cinema"))
    restored = model.predict_proba([query])[0]
    print(f"  rule removed: back to {restored[entertainment]:.3f}")

    examples = [
        text
        for text, label in zip(data.train.texts, data.train.labels)
        if label == "entertainment"
    ][:3]
    model.write_memory(examples, ["entertainment"] * len(examples))
    written = model.predict_proba([query])[0]
    print(
        f"  {len(examples)} labelled entertainment sentences written to "
        f"memory: P(entertainment) {before[entertainment]:.3f} -> "
        f"{written[entertainment]:.3f}"
    )
    (result,) = model.explain([query], top_k=1)
    show(result)
    # Labelled slots vote for every query they are recalled by, so check
    # what the writes did to a sentence about something else.
    other = sentences[0]
    (top,) = model.classify([other], top_k=1)
    print(
        f"  an unrelated sentence now: {other!r} -> {top[0][0]} {top[0][1]:.2f}"
    )

    os.makedirs(args.output, exist_ok=True)
    state_path = os.path.join(args.output, "memory.npz")
    model.save_memory_state(state_path)
    model.reset_memory()
    emptied = model.predict_proba([query])[0]
    model.load_memory_state(state_path)
    reloaded = model.predict_proba([query])[0]
    print(
        f"  memory saved to {state_path}, emptied "
        f"(P {emptied[entertainment]:.3f}) and reloaded "
        f"(P {reloaded[entertainment]:.3f})"
    )

    model_path = os.path.join(args.output, "model.keras")
    save_model(model, model_path)
    copy = load_model(model_path)
    same = np.allclose(copy.predict_proba([query]), [reloaded], atol=1e-5)
    print(
        f"  saved {model_path}; the reloaded model keeps its rules "
        f"({len(copy.rules)}) and memory and predicts the same: {same}"
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
