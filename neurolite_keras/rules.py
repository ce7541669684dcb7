"""Symbolic rules as plain data, evaluated beside the featurizer.

A rule set is a JSON (or YAML, when PyYAML is installed) file or a Python
dict. Its predicates are checked in Python on the tokens of
`neurolite_keras.tokenizer.tokenize` and on the normalized text, outside
the graph, so an exported model stays built-in-only; the graph receives
only the fixed-shape evidence array of `RuleSet.evaluate`, which does not
depend on the number of rules. Rules can therefore be added, removed or
re-weighted after training, and the edit changes predictions at once.

Schema (every field is checked; an unknown field is an error)::

    {
      "version": 1,                      # optional; 1 is the only version
      "description": "How it was made",  # optional; free text (a str or a
                                         # list of str), kept as is
      "labels": ["refund", "card", ...], # optional; if given, every rule's
                                         # label must be one of them
      "lexicons": {                      # optional; named keyword lists
        "money": ["refund", "cash*", "remboursement"]
      },
      "negation": {                      # optional; without it nothing is
        "cues": ["not", "no", "never",   #   negated and `negated` rules
                 "ne", "pas", "jamais"], #   are an error
        "scope": 3,                      # word tokens after a cue
        "breaks": [".", ",", "but"]      # optional; tokens that end a
      },                                 #   scope (default: punctuation)
      "rules": [                         # optional; may be empty
        {
          "name": "asks_refund",         # required, unique
          "label": "refund",             # required
          "weight": 0.8,                 # required, in [0, 1]
          "effect": "support",           # "support" (default) or "oppose"
          "negated": false,              # optional, default false
          "when": {                      # required; one or more of:
            "any_keywords": ["refund", "money back"],
            "all_keywords": ["card", "declin*"],
            "lexicon": "money",          # a name, or a list of names
            "regex": "\\\\b\\\\d+ ?(eur|usd|€|\\\\$)"
          }
        }
      ]
    }

Matching:

- Keywords (in `any_keywords`, `all_keywords`, lexicons and negation cues)
  are tokenized like the text, so `"money back"` matches two consecutive
  tokens and a Chinese keyword its characters in order. Case and Unicode
  compatibility forms do not matter (both sides are NFKC-normalized and
  case-folded); typographic apostrophes count as `'`. A keyword ending in
  `*` matches any token that starts with the rest (`"declin*"` matches
  `declined`, `déclin` does not).
- `when` holds when all its conditions hold: `any_keywords`, some keyword
  occurs; `all_keywords`, every keyword occurs; `lexicon`, some entry of
  the named lexicon(s) occurs; `regex`, the pattern (Python `regex`
  syntax) is found in the normalized, case-folded text, so write it in
  lower case.
- Negation: a token is negated when it lies within `scope` word tokens
  after a cue (punctuation not listed in `breaks` is skipped; a break ends
  the scope). A rule with `"negated": false` counts only occurrences that
  are not negated ("no refund" does not fire a `refund` rule); one with
  `"negated": true` counts only negated occurrences. Regular expressions
  ignore negation, so a negated rule needs a keyword or lexicon
  condition. Negation does not compose: double negatives are not resolved.

Evidence: for each text and label, `support = 1 - prod(1 - weight)` over
the firing `support` rules of that label (noisy-OR), and likewise
`opposition` over the firing `oppose` rules. `evaluate` returns them as a
float32 array `(batch, 2, num_labels)`, `[:, 0]` support and `[:, 1]`
opposition, in the order of the model's `label_names`.
"""

import copy
import json
import os

import numpy as np
import regex

from neurolite_keras.atomic_io import write_json
from neurolite_keras.featurizer import check_texts
from neurolite_keras.tokenizer import normalize
from neurolite_keras.tokenizer import tokenize

SCHEMA_VERSION = 1
EFFECTS = ("support", "oppose")
CONDITIONS = ("any_keywords", "all_keywords", "lexicon", "regex")
DEFAULT_BREAKS = (".", "!", "?", ";", ":", ",", "。", "！", "？", "；", "，")
# Starting points for `negation.cues`; not applied unless listed.
NEGATION_CUES = {
    "en": (
        "not", "no", "never", "nothing", "none", "nobody", "nor", "without",
        "cannot", "can't", "don't", "doesn't", "didn't", "isn't", "aren't",
        "wasn't", "won't", "haven't", "hasn't", "couldn't", "shouldn't",
    ),
    "fr": (
        "ne", "n'", "pas", "jamais", "rien", "aucun", "aucune", "sans", "ni",
    ),
}  # fmt: skip

_TOP_LEVEL = (
    "version", "description", "labels", "lexicons", "negation", "rules",
)  # fmt: skip
_NEGATION_FIELDS = ("cues", "scope", "breaks")
_RULE_FIELDS = ("name", "label", "weight", "effect", "negated", "when")
_REQUIRED_RULE_FIELDS = ("name", "label", "weight", "when")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_WORD = regex.compile(r"[\p{L}\p{N}]")


def _tokens(text):
    return tokenize(text.translate(_APOSTROPHES))


def _is_str_list(value):
    return isinstance(value, (list, tuple)) and all(
        isinstance(item, str) for item in value
    )


class _Pattern:
    """A keyword compiled to a token sequence; `prefix` for a final `*`."""

    def __init__(self, keyword, where):
        if not isinstance(keyword, str):
            raise ValueError(
                f"{where}: keywords must be strings. Received: {keyword!r}"
            )
        self.keyword = keyword
        text = keyword.strip()
        self.prefix = text.endswith("*")
        if self.prefix:
            text = text[:-1]
        self.tokens = tuple(_tokens(text))
        if not self.tokens:
            raise ValueError(
                f"{where}: keyword {keyword!r} has no token to match."
            )

    def starts(self, tokens, index):
        """Positions where the pattern occurs in `tokens`."""
        first, size = self.tokens[0], len(self.tokens)
        if self.prefix and size == 1:
            candidates = [
                i for i, token in enumerate(tokens) if token.startswith(first)
            ]
        else:
            candidates = index.get(first, ())
        found = []
        for start in candidates:
            window = tokens[start : start + size]
            if len(window) < size:
                continue
            if self.prefix:
                ok = window[:-1] == list(self.tokens[:-1]) and window[
                    -1
                ].startswith(self.tokens[-1])
            else:
                ok = tuple(window) == self.tokens
            if ok:
                found.append(start)
        return found


class _Text:
    """One text, tokenized and indexed once for every rule."""

    def __init__(self, text, negation):
        self.normalized = normalize(text.translate(_APOSTROPHES))
        self.tokens = _tokens(text)
        self.index = {}
        for position, token in enumerate(self.tokens):
            self.index.setdefault(token, []).append(position)
        self.negated = [False] * len(self.tokens)
        if negation is not None:
            self._mark_negation(*negation)

    def _mark_negation(self, cues, scope, breaks):
        for cue in cues:
            for start in cue.starts(self.tokens, self.index):
                position, counted = start + len(cue.tokens), 0
                while position < len(self.tokens) and counted < scope:
                    token = self.tokens[position]
                    if token in breaks:
                        break
                    if _WORD.search(token):
                        self.negated[position] = True
                        counted += 1
                    position += 1

    def occurs(self, pattern, negated):
        """Whether `pattern` occurs with the given negation status."""
        return any(
            self.negated[start] == negated
            for start in pattern.starts(self.tokens, self.index)
        )


class _Rule:
    """A validated rule with its predicates compiled."""

    def __init__(self, spec, position, lexicons, labels, has_negation):
        name = spec.get("name") if isinstance(spec, dict) else None
        where = (
            f"rule {name!r} (rules[{position}])"
            if isinstance(name, str) and name
            else f"rules[{position}]"
        )
        if not isinstance(spec, dict):
            raise ValueError(
                f"{where}: a rule must be a dict. Received: {spec!r:.80}"
            )
        unknown = sorted(set(spec) - set(_RULE_FIELDS))
        if unknown:
            raise ValueError(
                f"{where}: unknown field(s) {unknown}. Known fields: "
                f"{list(_RULE_FIELDS)}"
            )
        missing = [key for key in _REQUIRED_RULE_FIELDS if key not in spec]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}.")
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{where}: `name` must be a non-empty string. Received: "
                f"{name!r}"
            )
        label = spec["label"]
        if not isinstance(label, str) or not label:
            raise ValueError(
                f"{where}: `label` must be a non-empty string. Received: "
                f"{label!r}"
            )
        if labels is not None and label not in labels:
            raise ValueError(
                f"{where}: unknown label {label!r}. Known labels: "
                f"{list(labels)}"
            )
        weight = spec["weight"]
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not 0.0 <= weight <= 1.0
        ):
            raise ValueError(
                f"{where}: `weight` must be a number in [0, 1]. Received: "
                f"{weight!r}"
            )
        effect = spec.get("effect", "support")
        if effect not in EFFECTS:
            raise ValueError(
                f"{where}: `effect` must be one of {EFFECTS}. Received: "
                f"{effect!r}"
            )
        negated = spec.get("negated", False)
        if not isinstance(negated, bool):
            raise ValueError(
                f"{where}: `negated` must be true or false. Received: "
                f"{negated!r}"
            )
        self.name, self.label, self.weight = name, label, float(weight)
        self.effect, self.negated = effect, negated
        self._compile_when(spec["when"], where, lexicons)
        if negated and not has_negation:
            raise ValueError(
                f"{where}: `negated` is true but the rule set declares no "
                "`negation` cues."
            )
        if negated and not (self.any_of or self.all_of or self.lexicon):
            raise ValueError(
                f"{where}: a negated rule needs a keyword or lexicon "
                "condition (regular expressions ignore negation)."
            )
        self.spec = {
            "name": name,
            "label": label,
            "weight": weight,
            "effect": effect,
            "negated": negated,
            "when": copy.deepcopy(spec["when"]),
        }

    def _compile_when(self, when, where, lexicons):
        if not isinstance(when, dict) or not when:
            raise ValueError(
                f"{where}: `when` must be a non-empty dict of conditions "
                f"{list(CONDITIONS)}. Received: {when!r:.80}"
            )
        unknown = sorted(set(when) - set(CONDITIONS))
        if unknown:
            raise ValueError(
                f"{where}: unknown condition(s) {unknown} in `when`. Known "
                f"conditions: {list(CONDITIONS)}"
            )
        self.any_of = self.all_of = self.lexicon = None
        self.regex = None
        for key in ("any_keywords", "all_keywords"):
            if key not in when:
                continue
            keywords = when[key]
            if not _is_str_list(keywords) or not keywords:
                raise ValueError(
                    f"{where}: `when.{key}` must be a non-empty list of "
                    f"strings. Received: {keywords!r:.80}"
                )
            patterns = [_Pattern(k, f"{where} `when.{key}`") for k in keywords]
            if key == "any_keywords":
                self.any_of = patterns
            else:
                self.all_of = patterns
        if "lexicon" in when:
            names = when["lexicon"]
            names = [names] if isinstance(names, str) else names
            if not _is_str_list(names) or not names:
                raise ValueError(
                    f"{where}: `when.lexicon` must be a lexicon name or a "
                    f"non-empty list of names. Received: {when['lexicon']!r}"
                )
            for lexicon in names:
                if lexicon not in lexicons:
                    raise ValueError(
                        f"{where}: unknown lexicon {lexicon!r}. Declared "
                        f"lexicons: {sorted(lexicons)}"
                    )
            self.lexicon = [p for lexicon in names for p in lexicons[lexicon]]
        if "regex" in when:
            pattern = when["regex"]
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(
                    f"{where}: `when.regex` must be a non-empty string. "
                    f"Received: {pattern!r}"
                )
            try:
                self.regex = regex.compile(pattern)
            except regex.error as error:
                raise ValueError(
                    f"{where}: invalid regular expression {pattern!r}: {error}"
                ) from None

    def matches(self, text):
        """The matched keywords or spans, or `None` when the rule is off."""
        matched = []
        if self.any_of is not None:
            hits = [p for p in self.any_of if text.occurs(p, self.negated)]
            if not hits:
                return None
            matched += [p.keyword for p in hits]
        if self.all_of is not None:
            for pattern in self.all_of:
                if not text.occurs(pattern, self.negated):
                    return None
            matched += [p.keyword for p in self.all_of]
        if self.lexicon is not None:
            hits = [p for p in self.lexicon if text.occurs(p, self.negated)]
            if not hits:
                return None
            matched += [p.keyword for p in hits]
        if self.regex is not None:
            found = self.regex.search(text.normalized)
            if found is None:
                return None
            matched.append(found.group(0))
        return matched


class RuleSet:
    """Weighted rules over texts, turned into evidence for each label.

    See the module docstring for the schema and the matching semantics.
    A rule set is immutable: `with_rule` and `without_rule` return edited
    copies, and `to_dict` returns a copy to edit freely and pass back to
    `from_dict`. An empty rule set is valid and gives zero evidence.

    Args:
        rules: list of rule dicts. Defaults to no rules.
        labels: list of str or `None`. The labels rules may name; `None`
            checks labels only when evaluating.
        lexicons: dict of name to list of keywords, or `None`.
        negation: dict with `cues`, `scope` and optional `breaks`, or
            `None` for no negation handling.
        description: str, list of str, or `None`. Free text that says
            what the rules are for and how they were made; it does not
            change what they do.

    Raises:
        ValueError: for any invalid field, naming the rule (by name and
            index) or the section at fault.

    Example:

    >>> rules = RuleSet.from_dict({
    ...     "labels": ["refund", "other"],
    ...     "negation": {"cues": ["not", "pas"], "scope": 3},
    ...     "rules": [{"name": "asks_refund", "label": "refund",
    ...                "weight": 0.8, "when": {"any_keywords": ["refund"]}}],
    ... })
    >>> rules.evaluate(["I want a refund", "not a refund"])[:, 0]
    array([[0.8, 0. ],
           [0. , 0. ]], dtype=float32)
    >>> rules.explain(["I want a refund"])[0][0]["name"]
    'asks_refund'
    """

    def __init__(
        self,
        rules=(),
        labels=None,
        lexicons=None,
        negation=None,
        description=None,
    ):
        self._description = self._check_description(description)
        self._labels = self._check_labels(labels)
        self._lexicons_spec, lexicons = self._check_lexicons(lexicons)
        self._negation_spec, self._negation = self._check_negation(negation)
        if isinstance(rules, (str, bytes, dict)) or not isinstance(
            rules, (list, tuple)
        ):
            raise ValueError(
                f"RuleSet: `rules` must be a list of rule dicts. Received: "
                f"{type(rules).__name__}"
            )
        self._rules = []
        seen = {}
        for position, spec in enumerate(rules):
            rule = _Rule(
                spec,
                position,
                lexicons,
                self._labels,
                has_negation=self._negation is not None,
            )
            if rule.name in seen:
                raise ValueError(
                    f"rule {rule.name!r} (rules[{position}]): duplicate "
                    f"name; rules[{seen[rule.name]}] has it too."
                )
            seen[rule.name] = position
            self._rules.append(rule)

    @staticmethod
    def _check_description(description):
        if description is None:
            return None
        if isinstance(description, str):
            return description
        if not _is_str_list(description):
            raise ValueError(
                "RuleSet: `description` must be a str or a list of str. "
                f"Received: {description!r:.80}"
            )
        return list(description)

    @staticmethod
    def _check_labels(labels):
        if labels is None:
            return None
        if not _is_str_list(labels) or not all(labels):
            raise ValueError(
                "RuleSet: `labels` must be a list of non-empty strings. "
                f"Received: {labels!r:.80}"
            )
        duplicates = sorted({x for x in labels if list(labels).count(x) > 1})
        if duplicates:
            raise ValueError(f"RuleSet: duplicate label(s) {duplicates}.")
        return tuple(labels)

    @staticmethod
    def _check_lexicons(lexicons):
        if lexicons is None:
            return None, {}
        if not isinstance(lexicons, dict):
            raise ValueError(
                "RuleSet: `lexicons` must be a dict of name to keyword list. "
                f"Received: {type(lexicons).__name__}"
            )
        compiled = {}
        for name, keywords in lexicons.items():
            where = f"lexicon {name!r}"
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"RuleSet: lexicon names must be non-empty strings. "
                    f"Received: {name!r}"
                )
            if not _is_str_list(keywords) or not keywords:
                raise ValueError(
                    f"{where}: must be a non-empty list of strings. "
                    f"Received: {keywords!r:.80}"
                )
            compiled[name] = [_Pattern(k, where) for k in keywords]
        return copy.deepcopy(lexicons), compiled

    @staticmethod
    def _check_negation(negation):
        if negation is None:
            return None, None
        if not isinstance(negation, dict):
            raise ValueError(
                "RuleSet: `negation` must be a dict with `cues` and `scope`. "
                f"Received: {negation!r:.80}"
            )
        unknown = sorted(set(negation) - set(_NEGATION_FIELDS))
        if unknown:
            raise ValueError(
                f"RuleSet: unknown field(s) {unknown} in `negation`. Known "
                f"fields: {list(_NEGATION_FIELDS)}"
            )
        for key in ("cues", "scope"):
            if key not in negation:
                raise ValueError(f"RuleSet: `negation` misses `{key}`.")
        cues, scope = negation["cues"], negation["scope"]
        if not _is_str_list(cues):
            raise ValueError(
                "RuleSet: `negation.cues` must be a list of strings. "
                f"Received: {cues!r:.80}"
            )
        if isinstance(scope, bool) or not isinstance(scope, int) or scope < 1:
            raise ValueError(
                "RuleSet: `negation.scope` must be a positive integer. "
                f"Received: {scope!r}"
            )
        breaks = negation.get("breaks", list(DEFAULT_BREAKS))
        if not _is_str_list(breaks):
            raise ValueError(
                "RuleSet: `negation.breaks` must be a list of strings. "
                f"Received: {breaks!r:.80}"
            )
        patterns = [_Pattern(cue, "negation cue") for cue in cues]
        break_tokens = {t for b in breaks for t in _tokens(b)}
        spec = {"cues": list(cues), "scope": scope, "breaks": list(breaks)}
        return spec, (patterns, scope, break_tokens)

    # Construction and storage.

    @classmethod
    def from_dict(cls, data):
        """Builds a rule set from its dict form (see the module docstring)."""
        if not isinstance(data, dict):
            raise ValueError(
                "RuleSet.from_dict expects a dict. Received: "
                f"{type(data).__name__}"
            )
        unknown = sorted(set(data) - set(_TOP_LEVEL))
        if unknown:
            raise ValueError(
                f"RuleSet: unknown top-level field(s) {unknown}. Known "
                f"fields: {list(_TOP_LEVEL)}"
            )
        version = data.get("version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"RuleSet: unsupported `version` {version!r}; this release "
                f"reads version {SCHEMA_VERSION}."
            )
        rules = data.get("rules")
        return cls(
            rules=[] if rules is None else rules,
            labels=data.get("labels"),
            lexicons=data.get("lexicons"),
            negation=data.get("negation"),
            description=data.get("description"),
        )

    def to_dict(self):
        """The rule set as plain data (a copy), with defaults filled in."""
        data = {"version": SCHEMA_VERSION}
        if self._description is not None:
            data["description"] = copy.deepcopy(self._description)
        if self._labels is not None:
            data["labels"] = list(self._labels)
        if self._lexicons_spec is not None:
            data["lexicons"] = copy.deepcopy(self._lexicons_spec)
        if self._negation_spec is not None:
            data["negation"] = copy.deepcopy(self._negation_spec)
        data["rules"] = [copy.deepcopy(rule.spec) for rule in self._rules]
        return data

    get_config = to_dict

    @classmethod
    def from_config(cls, config):
        return cls.from_dict(config)

    @classmethod
    def from_json_file(cls, path):
        """Reads a JSON rule file."""
        with open(path, encoding="utf-8") as file:
            text = file.read()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}: invalid JSON at line {error.lineno}, column "
                f"{error.colno}: {error.msg}"
            ) from None
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path):
        """Reads a `.json`, `.yaml` or `.yml` rule file.

        YAML needs PyYAML, which is not a dependency of this package.
        """
        suffix = os.path.splitext(str(path))[1].lower()
        if suffix == ".json":
            return cls.from_json_file(path)
        if suffix not in (".yaml", ".yml"):
            raise ValueError(
                f"Rule files end in .json, .yaml or .yml. Received: {path}"
            )
        try:
            import yaml
        except ImportError:
            raise ImportError(
                f"Reading {path} needs PyYAML (`pip install pyyaml`); or "
                "write the rules as JSON."
            ) from None
        with open(path, encoding="utf-8") as file:
            try:
                data = yaml.safe_load(file)
            except yaml.YAMLError as error:
                raise ValueError(f"{path}: invalid YAML: {error}") from None
        return cls.from_dict({} if data is None else data)

    def to_json_file(self, path):
        """Writes the rule set as JSON, atomically (temp file, then rename).

        A failed write leaves any previous file at `path` intact.

        Returns:
            `path`.
        """
        write_json(path, self.to_dict())
        return path

    # Editing.

    def with_rule(self, rule):
        """A copy with `rule` added, or replacing the rule of that name."""
        data = self.to_dict()
        name = rule.get("name") if isinstance(rule, dict) else None
        names = [r["name"] for r in data["rules"]]
        if name in names:
            data["rules"][names.index(name)] = rule
        else:
            data["rules"].append(rule)
        return type(self).from_dict(data)

    def without_rule(self, name):
        """A copy without the rule called `name`."""
        data = self.to_dict()
        names = [r["name"] for r in data["rules"]]
        if name not in names:
            raise ValueError(f"No rule named {name!r}. Rules: {names}")
        del data["rules"][names.index(name)]
        return type(self).from_dict(data)

    # Inspection.

    @property
    def labels(self):
        """The declared labels (a tuple), or `None`."""
        return self._labels

    @property
    def names(self):
        """The rule names, in order."""
        return tuple(rule.name for rule in self._rules)

    def __len__(self):
        return len(self._rules)

    def __eq__(self, other):
        if not isinstance(other, RuleSet):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"RuleSet({len(self)} rules, labels={self._labels})"

    # Evaluation.

    def check_labels(self, label_names):
        """Raises a `ValueError` naming the first rule whose label is not in
        `label_names` (a model's labels); returns `label_names` as a list."""
        self._label_index(label_names)
        return list(label_names)

    def _label_index(self, label_names):
        if label_names is None:
            label_names = self._labels
        if label_names is None:
            raise ValueError(
                "Pass `label_names`: the rule set declares no `labels`."
            )
        label_names = list(label_names)
        if not _is_str_list(label_names):
            raise ValueError(
                "`label_names` must be a list of strings. Received: "
                f"{label_names!r:.80}"
            )
        index = {name: i for i, name in enumerate(label_names)}
        for position, rule in enumerate(self._rules):
            if rule.label not in index:
                raise ValueError(
                    f"rule {rule.name!r} (rules[{position}]): label "
                    f"{rule.label!r} is not among the model's labels "
                    f"{label_names}"
                )
        return index, len(label_names)

    def _fired(self, text):
        prepared = _Text(text, self._negation)
        fired = []
        for rule in self._rules:
            matched = rule.matches(prepared)
            if matched is not None:
                fired.append((rule, matched))
        return fired

    def evaluate(self, texts, label_names=None, return_fired=False):
        """The evidence of the rules for each text and label.

        Args:
            texts: str or sequence of str.
            label_names: the model's labels, in output order. Defaults to
                the declared `labels`. Every rule's label must be in it.
            return_fired: bool. Also return `explain`'s list.

        Returns:
            A float32 array `(len(texts), 2, len(label_names))`: support
            (`[:, 0]`) and opposition (`[:, 1]`) per label, each a noisy-OR
            of the firing rules' weights. With `return_fired`, a tuple
            `(evidence, fired)`.
        """
        texts = check_texts(texts)
        index, num_labels = self._label_index(label_names)
        # Accumulate log(1 - support) and log(1 - opposition); a weight of
        # 1 gives -inf, so 1 - exp(...) is exactly 1.
        log_none = np.zeros((len(texts), 2, num_labels), "float64")
        explanations = []
        for row, text in enumerate(texts):
            fired = self._fired(text) if self._rules else []
            for rule, _ in fired:
                channel = 0 if rule.effect == "support" else 1
                with np.errstate(divide="ignore"):
                    log_none[row, channel, index[rule.label]] += np.log1p(
                        -rule.weight
                    )
            if return_fired:
                explanations.append(self._describe(fired))
        evidence = (1.0 - np.exp(log_none)).astype("float32")
        if return_fired:
            return evidence, explanations
        return evidence

    @staticmethod
    def _describe(fired):
        return [
            {
                "name": rule.name,
                "label": rule.label,
                "effect": rule.effect,
                "weight": rule.weight,
                "negated": rule.negated,
                "matched": matched,
            }
            for rule, matched in fired
        ]

    def explain(self, texts):
        """Which rules fire on each text.

        Returns:
            One list per text of dicts with the rule's `name`, `label`,
            `effect`, `weight`, `negated` and `matched` (the keywords or
            regular-expression spans that made it fire), in rule order.
        """
        return [
            self._describe(self._fired(text)) for text in check_texts(texts)
        ]
