"""NeuroLite layers. Each is a Keras layer registered for serialization
under the package name `neurolite`; none depends on a backend."""

from neurolite_keras.layers.fnet import FNetBlock
from neurolite_keras.layers.hypermixer import HyperMixerBlock
from neurolite_keras.layers.memory import AssociativeMemory
from neurolite_keras.layers.memory import EpisodicLabelReadout
from neurolite_keras.layers.mlp_mixer import MlpMixerBlock
from neurolite_keras.layers.pooling import MaskedMaxPooling
from neurolite_keras.layers.pooling import MaskedMeanPooling
from neurolite_keras.layers.projection import HashProjection
from neurolite_keras.layers.routing import MixtureOfExperts
from neurolite_keras.layers.symbolic import SymbolicFusion
from neurolite_keras.layers.token_dropout import TokenDropout
