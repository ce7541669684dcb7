"""`NeuroLiteConfig`: every hyperparameter of a NeuroLite model, validated."""

import json

from neurolite_keras.validation import check_choice
from neurolite_keras.validation import check_number_in
from neurolite_keras.validation import check_positive_int as _positive_int
from neurolite_keras.validation import check_rate as _rate
from neurolite_keras.validation import is_integer
from neurolite_keras.validation import is_real

MIXER_TYPES = ("mlp", "hypermixer", "fnet")
POOLING_TYPES = ("mean", "max", "mean_max")
MINHASH_SCHEMES = ("k_functions", "bottom_k")


def _flag(name, value):
    if not isinstance(value, bool):
        raise ValueError(
            f"`{name}` must be True or False. Received: {name}={value!r}"
        )
    return value


def _positive_float(name, value):
    if not is_real(value) or not value > 0 or value != value:
        raise ValueError(
            f"`{name}` must be a positive number. Received: {name}={value!r}"
        )
    return float(value)


def _non_negative_float(name, value):
    if not is_real(value) or not value >= 0:
        raise ValueError(
            f"`{name}` must be a non-negative number. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def _non_negative_int(name, value):
    if not is_integer(value) or value < 0:
        raise ValueError(
            f"`{name}` must be a non-negative integer. "
            f"Received: {name}={value!r}"
        )
    return int(value)


def _mixer_type(name, value):
    return check_choice(name, value, MIXER_TYPES)


def _pooling(name, value):
    return check_choice(name, value, POOLING_TYPES)


def _minhash_scheme(name, value):
    return check_choice(name, value, MINHASH_SCHEMES)


def _lexical_weight(name, value):
    return check_number_in(name, value, 0.0, 100.0)


# name: (default, validator, doc). Defaults are the `tiny` preset.
_FIELDS = {
    # Featurizer (outside the graph).
    "max_sequence_length": (64, _positive_int, "tokens kept per text"),
    "num_hashes": (16, _positive_int, "MinHash values per token"),
    "minhash_scheme": ("k_functions", _minhash_scheme, "MinHash variant"),
    "bloom_filter_size": (16384, _positive_int, "counting Bloom filter size"),
    "ngram_min": (2, _positive_int, "shortest character n-gram"),
    "ngram_max": (4, _positive_int, "longest character n-gram"),
    "max_token_chars": (32, _positive_int, "characters hashed per token"),
    "lowercase": (True, _flag, "case-fold text before hashing"),
    "hash_seed": (0, _non_negative_int, "seed of every hash function"),
    # Backbone.
    "projection_size": (32, _positive_int, "bottleneck width"),
    "hidden_size": (128, _positive_int, "width of the token stream"),
    "num_mixer_layers": (4, _positive_int, "number of mixer blocks"),
    "mixer_type": ("mlp", _mixer_type, "token mixer family"),
    "token_mixing_size": (64, _positive_int, "token-mixing MLP width"),
    "channel_mixing_size": (384, _positive_int, "channel-mixing MLP width"),
    "dropout_rate": (0.1, _rate, "dropout inside blocks"),
    "token_dropout_rate": (0.1, _rate, "word dropout in training"),
    "hash_dropout_rate": (0.25, _rate, "Bloom index dropout in training"),
    "layer_norm_epsilon": (1e-5, _positive_float, "layer norm epsilon"),
    "pooling": ("mean", _pooling, "classifier's pooling of tokens"),
    # External memory.
    "use_external_memory": (False, _flag, "add associative memory"),
    "num_memory_slots": (32, _positive_int, "learned long-term slots"),
    "num_episodic_slots": (128, _positive_int, "slots written at inference"),
    "memory_key_size": (64, _positive_int, "memory key width"),
    "memory_readout_margin": (0.0, _rate, "episodic readout margin"),
    "memory_lexical_weight": (3.0, _lexical_weight, "lexical recall weight"),
    "memory_label_lexical_weight": (
        2.0,
        _lexical_weight,
        "lexical weight in label scores",
    ),
    # Dynamic routing.
    "use_dynamic_routing": (False, _flag, "add a mixture of experts"),
    "num_experts": (4, _positive_int, "experts per routed layer"),
    "num_experts_per_token": (1, _positive_int, "top-k experts per token"),
    "expert_size": (128, _positive_int, "hidden width of one expert"),
    "router_aux_loss_weight": (0.01, _non_negative_float, "balance loss"),
    # Symbolic module.
    "use_symbolic_module": (False, _flag, "fuse rule evidence into logits"),
}

# The Bloom filter's size, not the width of its rows, limits what the
# hashing projection can tell apart: on SIB-200 a linear SVM on the bag of
# Bloom indices reaches 0.49 test accuracy with 4,096 buckets, 0.55 with
# 8,192, 0.60 with 16,384 and 0.64 with 65,536 (`benchmarks/bloom_capacity.py`).
# So the presets spend their projection parameters on many narrow rows (a
# gather costs no FLOPs) and grow the filter faster than the mixer. Going
# further pays on SIB-200 (tiny with mean and max pooling, 8 epochs: 0.606
# test accuracy with 16,384 x 32 rows, 0.651 with 65,536 x 8, at the same
# parameter count), so `benchmarks/configs/sib200_*.json` do (tiny with
# bottom-k MinHash: 0.678 against 0.643, 12 epochs; and with HyperMixer and
# 81,920 x 8 rows, 1.16M parameters: 0.698). The presets
# keep 16,384 x 32: the narrow rows trained slowly on small data (4
# SIB-200 languages: still at chance after 5 epochs, with either pooling)
# and lost on Banking77 (tiny, 6 epochs: 0.875 with 65,536 x 8 and mean
# and max pooling, 0.892 with 16,384 x 32 and mean pooling; a classifier
# with memory, mean pooling, 5 epochs: 0.762 against 0.891 with 16,384 x
# 32 and mean and max pooling).
_PRESETS = {
    "tiny": {},
    "small": {
        "bloom_filter_size": 32768,
        "projection_size": 48,
        "hidden_size": 192,
        "num_mixer_layers": 5,
        "token_mixing_size": 96,
        "channel_mixing_size": 640,
    },
    "base": {
        "bloom_filter_size": 65536,
        "projection_size": 64,
        "hidden_size": 256,
        "num_mixer_layers": 6,
        "token_mixing_size": 128,
        "channel_mixing_size": 1024,
    },
}


class NeuroLiteConfig:
    """Hyperparameters of a NeuroLite model.

    A config holds everything needed to rebuild a model and its featurizer:
    the hashing settings, the backbone sizes and the optional modules.
    Fields are checked when set, at construction or later by assignment, so
    `config.use_external_memory = True` works as in the original interface
    and `config.hidden_size = -1` raises.

    Use a preset (`tiny()`, `small()`, `base()`: about 1M, 3M and 8M
    parameters with a 7-label head) or keywords for a custom model.

    Args:
        **kwargs: any field below; unset fields take the `tiny` defaults.
            Unknown names raise a `ValueError`.

    Fields:
        max_sequence_length: int. Tokens kept per text; longer texts are
            truncated by the featurizer. Defaults to `64`.
        num_hashes: int. MinHash values, so Bloom filter index slots, per
            token. Defaults to `16`.
        minhash_scheme: str. `"k_functions"` (pNLP-Mixer's: the minimum of
            each of `num_hashes` hash functions over a token's n-grams) or
            `"bottom_k"` (the `num_hashes` smallest values of one hash
            function, so each n-gram keeps one Bloom index whatever token
            it is in; a token with fewer distinct n-grams leaves its other
            slots empty, as -1). On SIB-200 a linear SVM on the bag of Bloom
            indices reaches 0.639 with `"k_functions"` and 0.674 with
            `"bottom_k"` (65,536 buckets, 16 values per token; 0.697 with
            32 values of 1- to 5-grams; `benchmarks/bloom_capacity.py`),
            and NeuroLite-tiny (MLP-Mixer, 65,536 x 8 rows) 0.643 and 0.678
            (the README's SIB-200 table). Defaults to
            `"k_functions"`, with which every model saved before this field
            was built and every other figure was measured.
        bloom_filter_size: int. Buckets of the counting Bloom filter, which
            is also the number of rows of the projection. Defaults to
            `16384`.
        ngram_min, ngram_max: int. Character n-gram orders hashed per token.
            Default to `2` and `4`.
        max_token_chars: int. Characters of a token that are hashed.
            Defaults to `32`.
        lowercase: bool. Case-fold before hashing. Defaults to `True`.
        hash_seed: int. Seed of the MurmurHash3 functions. Defaults to `0`.
        projection_size: int. Width of the hashing bottleneck. Defaults to
            `32`.
        hidden_size: int. Width of the token stream. Defaults to `128`.
        num_mixer_layers: int. Mixer blocks. Defaults to `4`.
        mixer_type: str. `"mlp"`, `"hypermixer"` or `"fnet"`. Defaults to
            `"mlp"`.
        token_mixing_size: int. Hidden width of the token-mixing MLP (or of
            the HyperMixer hypernetwork). Defaults to `64`.
        channel_mixing_size: int. Hidden width of the channel MLP. Defaults
            to `384`.
        dropout_rate: float. Defaults to `0.1`.
        token_dropout_rate: float. In training, the probability that a
            classifier treats a real token as padding (word dropout).
            Defaults to `0.1`.
        hash_dropout_rate: float. In training, the probability of dropping
            each Bloom filter index of a token in the projection. Defaults
            to `0.25`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        pooling: str. How a classifier turns token vectors into one text
            vector: `"mean"`, `"max"` or `"mean_max"` (both, concatenated).
            Max pooling lets the few topic words of a text set a feature
            where the mean dilutes them among function words: on SIB-200,
            `"mean_max"` gained 3.7 points of test accuracy over `"mean"`
            (tiny, 10 epochs). The default stays `"mean"`: a classifier
            with external memory needs it (with `"mean_max"`, no readout
            margin taught Banking77 intents by writing examples without
            losing trained ones), and `benchmarks/configs/sib200_*.json`
            set `"mean_max"` for topic classification. Defaults to
            `"mean"`.
        use_external_memory: bool. Add the associative memory. Defaults to
            `False`.
        num_memory_slots, num_episodic_slots, memory_key_size: int. Memory
            sizes. Default to `32`, `128` and `64`.
        memory_readout_margin: float in `[0, 1)`. In a classifier with
            memory, by how much a text must be closer to the prototype of a
            label's written examples than to the trained label vectors for
            those examples to win (`EpisodicLabelReadout`'s `margin`; choose
            it on held-out data, with `memory_label_lexical_weight`).
            Defaults to `0.0`, the margin chosen on Banking77 with the
            default label lexical weight (`benchmarks/memory_new_labels.py`).
        memory_lexical_weight: float in `[0, 100]`. Weight of the lexical
            cosine (texts' shared rare words) added to the learned one when
            episodic slots are recalled (`AssociativeMemory`'s
            `lexical_weight`); `0` builds the memory without lexical keys.
            Defaults to `3.0`; a model saved before this field existed
            loads with `0`, as it was built.
        memory_label_lexical_weight: float in `[0, 100]`. In a classifier
            with memory, weight of the lexical cosine in the scores of the
            labels of written examples (`AssociativeMemory`'s
            `label_lexical_weight`; ignored when `memory_lexical_weight` is
            0). Choose it on held-out data with the readout margin.
            Defaults to `2.0`; a model saved before this field existed
            loads with `0`, as it was built.
        use_dynamic_routing: bool. Add a mixture of experts. Defaults to
            `False`.
        num_experts, num_experts_per_token, expert_size: int. Routing sizes.
            Default to `4`, `1` and `128`.
        router_aux_loss_weight: float. Weight of the load-balancing loss.
            Defaults to `0.01`.
        use_symbolic_module: bool. Fuse rule evidence into the logits.
            Defaults to `False`.

    Example:

    >>> config = NeuroLiteConfig.tiny()
    >>> config.use_external_memory = True
    >>> NeuroLiteConfig.from_json(config.to_json()) == config
    True
    """

    def __init__(self, **kwargs):
        unknown = sorted(set(kwargs) - set(_FIELDS))
        if unknown:
            raise ValueError(
                f"Unknown NeuroLiteConfig field(s): {unknown}. "
                f"Known fields: {sorted(_FIELDS)}"
            )
        for name, (default, _, _) in _FIELDS.items():
            setattr(self, name, kwargs.get(name, default))
        self._check_consistency()

    def __setattr__(self, name, value):
        if name not in _FIELDS:
            raise AttributeError(
                f"NeuroLiteConfig has no field {name!r}. "
                f"Known fields: {sorted(_FIELDS)}"
            )
        if self.__dict__.get("_frozen"):
            raise AttributeError(
                f"This config describes a built model, which does not change "
                f"when its config does (setting {name}={value!r} would only "
                "make the saved model differ from the one in memory). Build a "
                f"new model from `model.config.copy({name}=...)`."
            )
        _, validate, _ = _FIELDS[name]
        value = validate(name, value)
        if len(self.__dict__) < len(_FIELDS):  # Still in `__init__`.
            object.__setattr__(self, name, value)
            return
        previous = self.__dict__[name]
        object.__setattr__(self, name, value)
        try:
            self._check_consistency()
        except ValueError:
            object.__setattr__(self, name, previous)
            raise

    def _check_consistency(self):
        if self.ngram_min > self.ngram_max:
            raise ValueError(
                "`ngram_min` must not exceed `ngram_max`. Received: "
                f"ngram_min={self.ngram_min}, ngram_max={self.ngram_max}"
            )
        if self.num_experts_per_token > self.num_experts:
            raise ValueError(
                "`num_experts_per_token` must not exceed `num_experts`. "
                f"Received: num_experts_per_token="
                f"{self.num_experts_per_token}, num_experts={self.num_experts}"
            )

    @classmethod
    def preset(cls, name, **overrides):
        """Returns the preset `name` (`"tiny"`, `"small"` or `"base"`)."""
        if name not in _PRESETS:
            raise ValueError(
                f"Unknown preset {name!r}. Available: {sorted(_PRESETS)}"
            )
        return cls(**{**_PRESETS[name], **overrides})

    @classmethod
    def tiny(cls, **overrides):
        """About 1M parameters (7-label head)."""
        return cls.preset("tiny", **overrides)

    @classmethod
    def small(cls, **overrides):
        """About 3M parameters (7-label head)."""
        return cls.preset("small", **overrides)

    @classmethod
    def base(cls, **overrides):
        """About 8M parameters (7-label head)."""
        return cls.preset("base", **overrides)

    def featurizer_config(self):
        """The fields the text featurizer depends on."""
        names = (
            "max_sequence_length",
            "num_hashes",
            "minhash_scheme",
            "bloom_filter_size",
            "ngram_min",
            "ngram_max",
            "max_token_chars",
            "lowercase",
            "hash_seed",
        )
        return {name: getattr(self, name) for name in names}

    def get_config(self):
        return {name: getattr(self, name) for name in _FIELDS}

    to_dict = get_config

    @classmethod
    def from_config(cls, config):
        if isinstance(config, cls):
            return config.copy()
        if not isinstance(config, dict):
            raise ValueError(
                "NeuroLiteConfig.from_config expects a dict. "
                f"Received: {type(config).__name__}"
            )
        return cls(**config)

    from_dict = from_config

    def to_json(self):
        return json.dumps(self.get_config(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"Invalid NeuroLiteConfig JSON: {error}") from None
        return cls.from_config(data)

    def copy(self, **overrides):
        """A new config (fields can be set) with `overrides` applied."""
        return type(self)(**{**self.get_config(), **overrides})

    def frozen(self):
        """A copy whose fields cannot be set: a built model's config, so
        that it always describes the model (`copy()` gives one to edit)."""
        config = self.copy()
        object.__setattr__(config, "_frozen", True)
        return config

    def __eq__(self, other):
        if not isinstance(other, NeuroLiteConfig):
            return NotImplemented
        return self.get_config() == other.get_config()

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"NeuroLiteConfig({fields})"


def preset_names():
    return tuple(_PRESETS)
