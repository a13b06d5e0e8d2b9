"""Text datasets: word tokens mapped to ids by a vocabulary built from the training fold."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np
import torch

from hpo.data.base import DataError, Dataset, FoldData, Split, Targets, check_indices
from hpo.data.readers import missing_column, parse_table

PAD_ID = 0
OOV_ID = 1
MAX_VOCAB = 20_000  # most frequent training words kept, besides padding and out-of-vocabulary
DEFAULT_MAX_LENGTH = 64  # as hpo.spec.DatasetSpec.max_length
MAX_LENGTH_BOUNDS = (4, 1024)  # as hpo.spec.DatasetSpec.max_length
DEFAULT_TEXT_COLUMN = "text"
DEFAULT_LABEL_COLUMN = "label"
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")  # letters/digits, with inner apostrophes ("don't")


def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and split it into words (letters and digits, inner apostrophes kept)."""
    return _WORD.findall(text.lower())


class TextDataset(Dataset):
    """Texts with one target each; folds give int64 token ids ``[n, max_length]``.

    Args:
        texts: one string per sample.
        targets: one target per sample.
        max_length: tokens kept per text (longer texts are truncated, shorter ones padded).
    """

    def __init__(self, texts: list[str], targets: Targets, max_length: int):
        if len(texts) != len(targets.values):
            raise DataError(f"{len(texts)} texts but {len(targets.values)} targets")
        self.tokens = [tokenize(t) for t in texts]
        self.targets = targets
        self.max_length = max_length
        self.task = targets.task
        self.n_samples = len(texts)
        self.labels = targets.values if targets.class_names is not None else None
        self.class_names = targets.class_names

    def fold(self, train_idx: np.ndarray, val_idx: np.ndarray) -> FoldData:
        """Build the vocabulary from the training texts only (0 = pad, 1 = out-of-vocabulary).

        See ``Dataset.fold``.
        """
        train_idx = check_indices("train_idx", train_idx, self.n_samples)
        val_idx = check_indices("val_idx", val_idx, self.n_samples)
        counts = Counter(word for i in train_idx for word in self.tokens[i])
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_VOCAB]
        vocab = {word: OOV_ID + 1 + rank for rank, (word, _) in enumerate(ranked)}
        y_train, y_val, target_scale = self.targets.split(train_idx, val_idx)
        return FoldData(
            train=self._encode(train_idx, vocab, y_train),
            val=self._encode(val_idx, vocab, y_val),
            n_features=None,
            vocab_size=len(vocab) + 2,
            out_dim=self.targets.out_dim,
            target_scale=target_scale,
        )

    def _encode(self, idx: np.ndarray, vocab: dict[str, int], y: torch.Tensor) -> Split:
        """Token ids padded with 0 to ``max_length``; an empty text becomes one OOV token."""
        ids = np.full((len(idx), self.max_length), PAD_ID, dtype=np.int64)
        lengths = np.empty(len(idx), dtype=np.int64)
        for row, i in enumerate(idx):
            words = self.tokens[i][: self.max_length]
            encoded = [vocab.get(w, OOV_ID) for w in words] or [OOV_ID]
            ids[row, : len(encoded)] = encoded
            lengths[row] = len(encoded)
        return Split(torch.from_numpy(ids), y, torch.from_numpy(lengths))

    def describe(self) -> dict[str, Any]:
        """See ``Dataset.describe``."""
        n_words = np.array([len(t) for t in self.tokens])
        return {
            "task": self.task,
            "input": "text",
            "n_samples": self.n_samples,
            "max_length": self.max_length,
            "words_per_text": {"mean": round(float(n_words.mean()), 2), "max": int(n_words.max())},
            "truncated_texts": int((n_words > self.max_length).sum()),
            "distinct_words": len({w for t in self.tokens for w in t}),
            **self.targets.describe(),
        }


def text_from_table(
    text: str,
    delimiter: str,
    task: str,
    max_length: int,
    text_column: str | None = None,
    label_column: str | None = None,
) -> TextDataset:
    """Build a text dataset from CSV/TSV text with a header row.

    Args:
        text: the decoded file.
        delimiter: ``","`` (csv) or ``"\\t"`` (tsv).
        task: ``"classification"`` (any labels) or ``"regression"`` (numeric labels).
        max_length: tokens kept per text.
        text_column: the column holding the texts (default ``"text"``).
        label_column: the column holding the labels (default ``"label"``).

    Returns:
        The validated dataset.

    Raises:
        DataError: for a missing column (naming the columns found), an empty or
            non-numeric label, a single class, or a malformed table.
    """
    header, rows = parse_table(text, delimiter)
    text_column = text_column or DEFAULT_TEXT_COLUMN
    label_column = label_column or DEFAULT_LABEL_COLUMN
    for role, name in (("text", text_column), ("label", label_column)):
        if name not in header:
            raise missing_column(role, name, header)
    text_at, label_at = header.index(text_column), header.index(label_column)
    texts = [fields[text_at] for _, fields in rows]
    labels = [_label(line, fields[label_at], label_column, task) for line, fields in rows]
    return TextDataset(texts, Targets.from_array(task, np.array(labels), name=label_column), max_length)


def _label(line: int, raw: str, column: str, task: str) -> str | float:
    """One label: a stripped string (classification) or a finite number (regression)."""
    value = raw.strip()
    if not value:
        raise DataError(f"line {line}: column {column!r} is empty; every row needs a label")
    if task != "regression":
        return value
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"line {line}: column {column!r} holds {value!r}; regression needs numeric labels") from None
    if not math.isfinite(number):
        raise DataError(f"line {line}: column {column!r} holds {value!r}; only finite numbers are accepted")
    return number
