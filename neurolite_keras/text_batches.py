"""`TextBatches`: raw texts to model inputs, batch by batch, on any backend."""

import math

import keras
import numpy as np


class TextBatches(keras.utils.PyDataset):
    """Featurizes raw texts lazily for `fit`, `evaluate` and `predict`.

    A `keras.utils.PyDataset`, so it feeds every backend the same way. Each
    batch is featurized when asked for; the featurizer's token cache makes
    later epochs cheap. With `shuffle=True` the order changes every epoch.

    Args:
        texts: list of str.
        labels: int array of label ids, or `None` for prediction.
        featurize: callable mapping a list of str to a dict of arrays (a
            model's `featurize` method).
        batch_size: int. Defaults to `32`.
        shuffle: bool. Reshuffle at each epoch. Defaults to `False`.
        seed: int. Seed of the shuffling.
        **kwargs: `PyDataset` arguments (`workers`, `use_multiprocessing`).
    """

    def __init__(
        self,
        texts,
        labels,
        featurize,
        batch_size=32,
        shuffle=False,
        seed=0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or batch_size < 1
        ):
            raise ValueError(
                "`batch_size` must be a positive integer. "
                f"Received: batch_size={batch_size!r}"
            )
        if labels is not None and len(labels) != len(texts):
            raise ValueError(
                f"Got {len(texts)} texts but {len(labels)} labels."
            )
        self.texts = list(texts)
        self.labels = None if labels is None else np.asarray(labels, "int32")
        self.featurize = featurize
        self.batch_size = batch_size
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(self.texts))
        if shuffle:
            self._rng.shuffle(self._order)

    def __len__(self):
        return math.ceil(len(self.texts) / self.batch_size)

    def __getitem__(self, index):
        start = index * self.batch_size
        rows = self._order[start : start + self.batch_size]
        features = self.featurize([self.texts[i] for i in rows])
        if self.labels is None:
            return (features,)
        return features, self.labels[rows]

    def on_epoch_end(self):
        if self.shuffle:
            self._rng.shuffle(self._order)
