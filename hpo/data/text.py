"""Text datasets: word tokens mapped to ids by a vocabulary built from the training fold."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hpo.data.base import DataError, Dataset, FoldData, Split, Targets, check_indices, sha256_of
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


@dataclass(frozen=True)
class TextVocabulary:
    """The word ids a model reads, fitted on training texts, as data.

    ``fold`` fits it on the training rows and encodes both sides with it; an exported model
    stores it (``to_dict``) and encodes new texts with the same ``encode``.

    Attributes:
        words: the kept words, most frequent first; ``words[i]`` has id ``i + 2``
            (0 is padding, 1 out-of-vocabulary).
        max_length: tokens kept per text.
    """

    words: list[str]
    max_length: int
    ids: dict[str, int] = field(init=False, repr=False, compare=False)

    kind = "text"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", {word: OOV_ID + 1 + rank for rank, word in enumerate(self.words)})

    @classmethod
    def fit(cls, token_lists: list[list[str]], max_length: int) -> TextVocabulary:
        """Keep the ``MAX_VOCAB`` most frequent words (ties in alphabetical order)."""
        counts = Counter(word for tokens in token_lists for word in tokens)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_VOCAB]
        return cls([word for word, _ in ranked], max_length)

    @property
    def size(self) -> int:
        """Distinct ids, padding and out-of-vocabulary included."""
        return len(self.words) + 2

    def encode(self, token_lists: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids ``[n, max_length]`` padded with 0, and lengths ``[n]``.

        Unknown words become the OOV id 1; an empty text becomes one OOV token.
        """
        ids = np.full((len(token_lists), self.max_length), PAD_ID, dtype=np.int64)
        lengths = np.empty(len(token_lists), dtype=np.int64)
        for row, tokens in enumerate(token_lists):
            encoded = [self.ids.get(w, OOV_ID) for w in tokens[: self.max_length]] or [OOV_ID]
            ids[row, : len(encoded)] = encoded
            lengths[row] = len(encoded)
        return ids, lengths

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "words": self.words, "max_length": self.max_length}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TextVocabulary:
        words, max_length = state["words"], state["max_length"]
        if not all(isinstance(w, str) and w for w in words) or len(set(words)) != len(words):
            raise DataError("text vocabulary: words must be distinct non-empty strings")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise DataError(f"text vocabulary: max_length must be a positive integer; got {max_length!r}")
        return cls(list(words), max_length)


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
        self.classes = targets.classes

    def fold(self, train_idx: np.ndarray, val_idx: np.ndarray) -> FoldData:
        """Build the vocabulary from the training texts only (0 = pad, 1 = out-of-vocabulary).

        See ``Dataset.fold``.
        """
        train_idx = check_indices("train_idx", train_idx, self.n_samples)
        val_idx = check_indices("val_idx", val_idx, self.n_samples)
        vocabulary = TextVocabulary.fit([self.tokens[i] for i in train_idx], self.max_length)
        y_train, y_val, target_scale = self.targets.split(train_idx, val_idx)
        return FoldData(
            train=self._encode(train_idx, vocabulary, y_train),
            val=self._encode(val_idx, vocabulary, y_val),
            n_features=None,
            vocab_size=vocabulary.size,
            out_dim=self.targets.out_dim,
            target_scale=target_scale,
            preprocessing=vocabulary,
        )

    def _encode(self, idx: np.ndarray, vocabulary: TextVocabulary, y: torch.Tensor) -> Split:
        ids, lengths = vocabulary.encode([self.tokens[i] for i in idx])
        return Split(torch.from_numpy(ids), y, torch.from_numpy(lengths))

    def fingerprint(self) -> str:
        """See ``Dataset.fingerprint`` (texts count as their tokens)."""
        return sha256_of(self.tokens, self.max_length, self.targets.values, self.class_names)

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
