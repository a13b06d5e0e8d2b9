"""The recurrent network: RNN / LSTM / GRU over numeric features or token embeddings."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class SequenceModel(nn.Module):
    """A stacked recurrent encoder whose final hidden state feeds a linear head.

    Args:
        cell: ``rnn``, ``lstm`` or ``gru``.
        hidden_size: units per direction and layer.
        out_dim: classes (classification) or predicted values (regression / forecasting).
        n_features: features per time step for numeric input.
        vocab_size: token ids per step for text input (0 is padding); embedded first.
        embedding_dim: size of the token embedding.
        num_layers: stacked recurrent layers.
        bidirectional: read the sequence both ways.
        dropout: between recurrent layers and before the head.

    Raises:
        ValueError: unless exactly one of ``n_features`` and ``vocab_size`` is given.
    """

    def __init__(
        self,
        *,
        cell: str,
        hidden_size: int,
        out_dim: int,
        n_features: int | None = None,
        vocab_size: int | None = None,
        embedding_dim: int = 64,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if (n_features is None) == (vocab_size is None):
            raise ValueError("give exactly one of n_features (numeric input) or vocab_size (tokens)")
        self.embedding = (
            nn.Embedding(vocab_size, embedding_dim, padding_idx=0) if vocab_size is not None else None
        )
        self.rnn = CELLS[cell](
            input_size=embedding_dim if vocab_size is not None else n_features,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Map a batch ``[n, T, F]`` (or token ids ``[n, T]``) to outputs ``[n, out_dim]``.

        With ``lengths``, padded steps are packed away so the final state is each
        sequence's own last step.
        """
        inputs = self.embedding(x) if self.embedding is not None else x
        if lengths is not None:
            inputs = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(inputs)
        h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h_n, c_n)
        if self.rnn.bidirectional:
            last = torch.cat([h_n[-2], h_n[-1]], dim=1)
        else:
            last = h_n[-1]
        return self.head(self.dropout(last))
