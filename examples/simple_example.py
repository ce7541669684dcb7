"""The simple example of the original description: texts in, one vector
per text out.

Run (any backend; most of the time goes into importing Keras):

    python examples/simple_example.py
    KERAS_BACKEND=jax python examples/simple_example.py "Une autre phrase."

It builds the NeuroLite-tiny backbone with random weights, feeds it raw
texts (no tokenizer or vocabulary to download: the featurizer hashes
character n-grams), and averages the token vectors into one embedding per
text. The weights are untrained, so the embeddings only show the shapes
and the flow; `classification_example.py` trains a model.
"""

import argparse

import keras
import numpy as np

from neurolite_keras import NeuroLiteConfig
from neurolite_keras import NeuroLiteModel

DEFAULT_TEXTS = [
    "NeuroLite est une architecture légère d'IA.",
    "NeuroLite is a lightweight AI architecture.",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "texts",
        nargs="*",
        default=DEFAULT_TEXTS,
        help="texts to embed (default: two examples)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)

    config = NeuroLiteConfig.tiny()
    model = NeuroLiteModel(config)
    print(
        f"Backend: {keras.backend.backend()}; NeuroLite-tiny backbone, "
        f"{model.count_params():,} parameters, random weights."
    )

    # Token vectors: (batch, max_sequence_length, hidden_size).
    outputs = model(input_texts=args.texts)
    print(f"Token vectors: shape {tuple(outputs.shape)}")

    # One vector per text, the mean over the sequence axis as in the
    # original description. (It averages padded positions too;
    # `keras.ops.sum(outputs * mask) / keras.ops.sum(mask)` with the
    # featurizer's padding mask averages the real tokens only.)
    embeddings = keras.ops.mean(outputs, axis=1)
    embeddings = keras.ops.convert_to_numpy(embeddings)
    print(f"Embeddings: shape {embeddings.shape}")
    for text, vector in zip(args.texts, embeddings):
        print(f"  {text[:50]!r}: first values {np.round(vector[:4], 3)}")
    if len(args.texts) > 1:
        unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
        print(
            f"Cosine similarity of the first two: "
            f"{float(unit[0] @ unit[1]):.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
