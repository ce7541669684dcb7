"""NeuroLite interactive demo: classify what you type, write sentences into
memory and see what later queries recall, and see which experts and rules
fired.

Run (from the repository root):

    python neurolite_demo.py --size tiny
    python neurolite_demo.py --model runs/demo/model.keras
    printf 'Le match a fini tard.\\n/quit\\n' | python neurolite_demo.py

The model classifies SIB-200 topics (science/technology, travel, politics,
sports, health, entertainment, geography) and has all three optional
modules switched on: the associative memory, the mixture of experts and
the rule module, with a small keyword rule set in French and English.
Where the model comes from:

- `--model PATH`: a trained `.keras` classifier (any NeuroLite classifier;
  commands for modules it lacks say so);
- by default: a quick model of `--size`, trained at start-up on
  `--train-sentences` French and English SIB-200 sentences for
  `--train-epochs` epochs (a few minutes for tiny on two CPU cores, most
  of it compiling the first training step; the accuracy of a quick run,
  not of the full recipe). `--save PATH` keeps the model for next time;
- `--untrained`: random weights, no training; its labels mean nothing and
  the demo says so. Rules and memory still act on the predictions.

Data come from `--data-dir` or `NEUROLITE_DATA_DIR`, else the loaders'
checked one-time download. The demo reads standard input line by line
until end of file; at a terminal it shows a prompt, otherwise it prints
only the answers, so it can be driven by a pipe. Type `/help` for the
commands.
"""

import argparse
import os
import sys

LABELS = (
    "science/technology",
    "travel",
    "politics",
    "sports",
    "health",
    "entertainment",
    "geography",
)
# A small rule set written from the label names and a few keywords in
# French and English: evidence the model fuses with what it learned. A
# keyword ending in `*` matches any word it starts.
KEYWORDS = {
    "sports": "match football tennis championnat championship équipe team "
    "goal olympi* joueur* player*",
    "politics": "élection* election* parlement parliament président "
    "president gouvernement government ministre minister vote*",
    "health": "santé health vaccin* hôpital hospital malad* disease* "
    "patient* médecin* doctor*",
    "science/technology": "scientifique* scientist* recherche research "
    "ordinateur* computer* technolog* espace space physique physics",
    "travel": "voyage* travel* touris* hôtel hotel flight visiter visit* "
    "passeport passport",
    "entertainment": "film* movie* musique music concert* festival acteur* "
    "actor* chanson* song*",
    "geography": "montagne* mountain* rivière* river* océan* ocean* "
    "continent* île* island* climat climate",
}
RULES = {
    "labels": list(LABELS),
    "negation": {"cues": "not no never pas jamais ni".split(), "scope": 3},
    "rules": [
        {
            "name": label.split("/")[0] + "_words",
            "label": label,
            "weight": 0.6 if label in ("sports", "politics", "health") else 0.5,
            "when": {"any_keywords": words.split()},
        }
        for label, words in KEYWORDS.items()
    ],
}
HELP = """commands:
  <text>                    classify the text (top labels, rules, experts,
                            what it recalls from memory)
  /remember <text>          write the text into episodic memory
  /teach <label> <text>     write it with a label: it then votes for that
                            label in later predictions
  /recall <text>            which remembered texts the query recalls
  /forget                   empty the episodic memory
  /rules                    list the rules
  /rule <label> <weight> <keyword>[,<keyword>...]
                            add a keyword rule (no retraining needed)
  /norule <name>            remove a rule
  /labels                   list the labels
  /help                     this text
  /quit                     leave (end of input does the same)"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--size",
        choices=("tiny", "small", "base"),
        default="tiny",
        help="preset of the quick model",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model", help="a trained NeuroLite .keras classifier to load instead"
    )
    source.add_argument(
        "--untrained",
        action="store_true",
        help="random weights, no training (labels are meaningless)",
    )
    parser.add_argument(
        "--train-sentences",
        type=int,
        default=700,
        help="SIB-200 sentences for the quick model (default: %(default)s)",
    )
    parser.add_argument(
        "--train-epochs",
        type=int,
        default=4,
        help="epochs of the quick model (default: %(default)s)",
    )
    parser.add_argument(
        "--max-sequence-length",
        type=int,
        default=64,
        help="tokens per text of the quick model",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=3,
        help="labels shown per text (default: %(default)s)",
    )
    parser.add_argument("--save", help="save the quick model here (.keras)")
    parser.add_argument("--data-dir", help="folder holding sib200/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in (
        "train_sentences",
        "train_epochs",
        "max_sequence_length",
        "top_k",
    ):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, "
                f"got {getattr(args, name)}"
            )
    if args.model and not os.path.isfile(args.model):
        parser.error(f"no model file at {args.model!r}")
    if args.save and not args.save.endswith(".keras"):
        parser.error(f"--save needs a .keras file name, got {args.save!r}")
    return args


# --- Building the model ----------------------------------------------------


def demo_config(size, max_sequence_length):
    from neurolite_keras import NeuroLiteConfig

    return NeuroLiteConfig.preset(
        size,
        max_sequence_length=max_sequence_length,
        use_external_memory=True,
        use_dynamic_routing=True,
        use_symbolic_module=True,
    )


def quick_model(args, say):
    """Builds the demo classifier, trained briefly unless `--untrained`."""
    import keras
    import numpy as np

    from neurolite_keras import NeuroLiteForClassification
    from neurolite_keras.datasets import load_sib200

    keras.utils.set_random_seed(args.seed)
    config = demo_config(args.size, args.max_sequence_length)
    model = NeuroLiteForClassification(
        config, label_names=list(LABELS), rules=RULES
    )
    if args.untrained:
        say(
            "NOTICE: untrained model (random weights): its labels mean "
            "nothing; only rules and labelled memories carry information."
        )
        return model, "untrained"
    data = load_sib200(args.data_dir, languages=["fra_Latn", "eng_Latn"])
    count = min(args.train_sentences, len(data.train))
    order = np.random.default_rng(args.seed).permutation(len(data.train))
    train = data.train.subset(sorted(order[:count]))
    say(
        f"Training a quick {args.size} model on {count} French and English "
        f"SIB-200 sentences for {args.train_epochs} epoch(s)..."
    )
    model.compile()
    model.fit(
        train.texts,
        train.labels,
        epochs=args.train_epochs,
        batch_size=32,
        verbose=0,
    )
    test = data.test
    accuracy = model.evaluate(
        test.texts, test.labels, verbose=0, return_dict=True
    )["accuracy"]
    say(
        f"Quick model: test accuracy {accuracy:.2f} on {len(test)} French "
        f"and English test sentences (chance {1 / len(LABELS):.2f})."
    )
    if args.save:
        from neurolite_keras.atomic_io import save_model

        save_model(model, args.save)
        say(f"Saved {args.save}")
    return model, f"quick ({count} sentences, {args.train_epochs} epochs)"


# --- The session -----------------------------------------------------------


class Demo:
    """One interactive session over a classifier; `handle` answers a line."""

    def __init__(self, model, top_k, say):
        self.model = model
        self.top_k = top_k
        self.say = say
        config = model.config
        self.has_memory = config.use_external_memory
        self.has_experts = config.use_dynamic_routing
        self.has_rules = config.use_symbolic_module
        self.rule_count = 0

    def handle(self, line):
        """Answers one input line; returns False to stop."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            self.classify(line)
            return True
        command, _, rest = line.partition(" ")
        rest = rest.strip()
        handlers = {
            "/remember": self.remember,
            "/teach": self.teach,
            "/recall": self.recall,
            "/forget": self.forget,
            "/rules": self.list_rules,
            "/rule": self.add_rule,
            "/norule": self.remove_rule,
            "/labels": self.list_labels,
            "/help": lambda _: self.say(HELP),
        }
        if command in ("/quit", "/exit"):
            return False
        if command not in handlers:
            self.say(f"unknown command {command!r}; /help lists them")
            return True
        try:
            handlers[command](rest)
        except ValueError as error:
            self.say(f"error: {error}")
        return True

    def classify(self, text):
        (result,) = self.model.explain([text], top_k=self.top_k)
        self.say(f"text: {text}")
        for rank, (label, probability) in enumerate(result["labels"], 1):
            bar = "#" * round(probability * 20)
            self.say(f"  {rank}. {label:20s} {probability:6.3f} {bar}")
        if self.has_rules:
            fired = result.get("rules", [])
            if not fired:
                self.say("  rules fired: none")
            for rule in fired:
                verb = "supports" if rule["effect"] == "support" else "opposes"
                self.say(
                    f"  rule fired: {rule['name']} {verb} "
                    f"{rule['label']} (weight {rule['weight']:.2f}; "
                    f"matched {', '.join(map(str, rule['matched']))})"
                )
        if self.has_experts:
            usage = result.get("experts", [])
            shares = "  ".join(
                f"#{i} {share:.0%}" for i, share in enumerate(usage)
            )
            self.say(f"  experts (share of tokens routed): {shares}")
        if self.has_memory:
            self._show_recall(result.get("memory", []), "  recalls")

    def _show_recall(self, recalled, lead):
        if not recalled:
            self.say(f"{lead}: nothing (memory is empty)")
            return
        for text, slot, weight in recalled:
            self.say(f"{lead}: weight {weight:.3f}  slot {slot}  {text!r}")

    def _need(self, present, module):
        if not present:
            raise ValueError(f"this model has no {module}")

    def remember(self, text):
        self._need(self.has_memory, "external memory")
        if not text:
            raise ValueError("/remember needs a text")
        (slot,) = self.model.write_memory([text]).tolist()
        self.say(f"remembered in slot {slot}: {text!r}")

    def teach(self, rest):
        self._need(self.has_memory, "external memory")
        label, _, text = rest.partition(" ")
        text = text.strip()
        if not label or not text:
            raise ValueError("usage: /teach <label> <text>")
        (slot,) = self.model.write_memory([text], [label]).tolist()
        self.say(f"remembered in slot {slot} with label {label}: {text!r}")

    def recall(self, text):
        self._need(self.has_memory, "external memory")
        if not text:
            raise ValueError("/recall needs a query")
        (recalled,) = self.model.recall([text], top_k=self.top_k)
        self.say(f"query: {text}")
        self._show_recall(recalled, "  recalls")

    def forget(self, _):
        self._need(self.has_memory, "external memory")
        self.model.reset_memory()
        self.say("memory emptied")

    def list_rules(self, _):
        self._need(self.has_rules, "rule module")
        spec = self.model.rules.to_dict()
        self.say(f"{len(spec.get('rules', []))} rule(s):")
        for rule in spec.get("rules", []):
            keywords = ", ".join(rule["when"].get("any_keywords", []))
            self.say(
                f"  {rule['name']}: {rule.get('effect', 'support')} "
                f"{rule['label']} (weight {rule['weight']}) "
                f"when any of: {keywords}"
            )

    def add_rule(self, rest):
        self._need(self.has_rules, "rule module")
        parts = rest.split(maxsplit=2)
        if len(parts) != 3:
            raise ValueError("usage: /rule <label> <weight> <kw>[,<kw>...]")
        label, weight, keywords = parts
        try:
            weight = float(weight)
        except ValueError:
            raise ValueError(
                f"weight must be a number, got {weight!r}"
            ) from None
        self.rule_count += 1
        name = f"user_rule_{self.rule_count}"
        rule = {
            "name": name,
            "label": label,
            "weight": weight,
            "when": {
                "any_keywords": [
                    k.strip() for k in keywords.split(",") if k.strip()
                ]
            },
        }
        self.model.set_rules(self.model.rules.with_rule(rule))
        self.say(f"added rule {name}: supports {label} (weight {weight})")

    def remove_rule(self, name):
        self._need(self.has_rules, "rule module")
        self.model.set_rules(self.model.rules.without_rule(name))
        self.say(f"removed rule {name}")

    def list_labels(self, _):
        self.say("labels: " + ", ".join(self.model.label_names))


def main(argv=None):
    args = parse_args(argv)
    interactive = sys.stdin.isatty()

    def say(message):
        print(message, flush=True)

    import keras

    from neurolite_keras import NeuroLiteForClassification
    from neurolite_keras import load_model

    if args.model:
        model = load_model(args.model)
        if not isinstance(model, NeuroLiteForClassification):
            say(
                f"error: {args.model} holds a {type(model).__name__}, not "
                "a NeuroLite classifier"
            )
            return 2
        origin = f"loaded from {args.model}"
        size = "custom"
    else:
        model, origin = quick_model(args, say)
        size = args.size
    modules = [
        name
        for name, on in (
            ("memory", model.config.use_external_memory),
            ("experts", model.config.use_dynamic_routing),
            ("rules", model.config.use_symbolic_module),
        )
        if on
    ]
    say(
        f"NeuroLite demo | backend: {keras.backend.backend()} | model: "
        f"{size}, {model.count_params():,} parameters, {origin} | "
        f"modules: {', '.join(modules) or 'none'}"
    )
    say("Type a sentence to classify it, /help for commands.")

    demo = Demo(model, args.top_k, say)
    while True:
        if interactive:
            try:
                line = input("> ")
            except (EOFError, KeyboardInterrupt):
                print()
                break
        else:
            line = sys.stdin.readline()
            if not line:
                break
        if not demo.handle(line):
            break
    say("bye")
    return 0


if __name__ == "__main__":
    sys.exit(main())
