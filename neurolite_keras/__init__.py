"""NeuroLite for Keras 3: tiny vocabulary-free language models for phones.

The same code trains under `KERAS_BACKEND=tensorflow`, `jax` or `torch`.
"""

from neurolite_keras import layers
from neurolite_keras.config import NeuroLiteConfig
from neurolite_keras.featurizer import TextFeaturizer
from neurolite_keras.litert_runner import LiteRTClassifier
from neurolite_keras.models import NeuroLiteForClassification
from neurolite_keras.models import NeuroLiteModel
from neurolite_keras.models import load_model
from neurolite_keras.tokenizer import tokenize

__version__ = "0.1.0"
