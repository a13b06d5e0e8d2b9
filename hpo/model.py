"""The recurrent network: RNN / LSTM / GRU over numeric features or token embeddings.

``Architecture`` describes a network (the trainers build from it, archives record it);
``SequenceModel`` is one network and :func:`predict_in_chunks` runs it over many rows.
``StackedSequenceModel`` runs several of them (a trial's CV folds) as one batched
computation: small recurrent networks on a CPU spend most of their time launching
kernels, and stacking k folds' models launches each kernel once.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
PREDICT_CHUNK = 4096  # rows per forward pass when predicting: bounds the activations' memory


class Architecture(BaseModel):
    """The ``SequenceModel`` arguments that build a network (and rebuild it from an archive)."""

    model_config = ConfigDict(extra="forbid")

    cell: Literal["rnn", "lstm", "gru"]
    hidden_size: int = Field(ge=1, le=4096)
    out_dim: int = Field(ge=1)
    n_features: int | None = Field(default=None, ge=1)
    vocab_size: int | None = Field(default=None, ge=3)
    embedding_dim: int = Field(ge=1)
    num_layers: int = Field(ge=1, le=4)
    bidirectional: bool
    dropout: float = Field(ge=0.0, lt=1.0)
    summary: Literal["last", "mean", "max", "attention"] = "last"
    frontend: Literal["none", "conv", "pool"] = "none"
    frontend_stride: int = Field(default=1, ge=1, le=64)

    def build(self) -> SequenceModel:
        """A network of this architecture (its initial weights drawn from torch's RNG)."""
        return SequenceModel(**self.model_dump())


class SequenceModel(nn.Module):
    """A stacked recurrent encoder whose summary of the sequence feeds a linear head.

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
        summary: what the head reads: the ``last`` hidden state, or the ``mean``, ``max`` or
            ``attention``-weighted sum of the top layer's states over the valid steps.
        frontend: ``conv`` (a strided 1-D convolution with a ReLU, ``hidden_size`` channels)
            or ``pool`` (average pooling) shortens numeric sequences ``frontend_stride``
            times before the recurrent layer; ``none`` reads every step.
        frontend_stride: how many steps the frontend merges into one.

    Raises:
        ValueError: unless exactly one of ``n_features`` and ``vocab_size`` is given, or
            for a frontend over token input.
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
        summary: str = "last",
        frontend: str = "none",
        frontend_stride: int = 1,
    ):
        super().__init__()
        if (n_features is None) == (vocab_size is None):
            raise ValueError("give exactly one of n_features (numeric input) or vocab_size (tokens)")
        if frontend != "none" and vocab_size is not None:
            raise ValueError(f"frontend {frontend} shortens numeric sequences; token input has none")
        self.embedding = (
            nn.Embedding(vocab_size, embedding_dim, padding_idx=0) if vocab_size is not None else None
        )
        self.summary = summary
        self.stride = frontend_stride if frontend != "none" else 1
        self.conv = (
            nn.Conv1d(n_features, hidden_size, kernel_size=frontend_stride, stride=frontend_stride)  # type: ignore[arg-type]
            if frontend == "conv" else None
        )
        self.rnn = CELLS[cell](
            input_size=embedding_dim if vocab_size is not None else hidden_size if self.conv is not None else n_features,
            hidden_size=hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        width = hidden_size * (2 if bidirectional else 1)
        self.attention = nn.Linear(width, 1) if summary == "attention" else None
        self.head = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Map a batch ``[n, T, F]`` (or token ids ``[n, T]``) to outputs ``[n, out_dim]``.

        With ``lengths``, padded steps are packed away so the final state is each
        sequence's own last step, and pooling summaries read only the valid steps.
        """
        inputs = self.embedding(x) if self.embedding is not None else x
        if self.stride > 1:
            inputs, lengths = self._shorten(inputs, lengths)
        steps = inputs.shape[1]
        if lengths is not None:
            inputs = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, state = self.rnn(inputs)
        if self.summary == "last":
            h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h_n, c_n)
            summary = torch.cat([h_n[-2], h_n[-1]], dim=1) if self.rnn.bidirectional else h_n[-1]
        else:
            if lengths is not None:
                outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=steps)
            summary = self._pool(outputs, lengths)
        return self.head(self.dropout(summary))

    def _shorten(self, inputs: torch.Tensor, lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The frontend: ``[n, T, F]`` -> ``[n, ceil(T / stride), C]``. Windows start at each
        sequence's first step, so a sequence's windows do not depend on its batch."""
        n, steps, width = inputs.shape
        padded = F.pad(inputs, (0, 0, 0, -steps % self.stride))  # zeros, like a variable-length batch's padding
        if self.conv is not None:
            shortened = torch.relu(self.conv(padded.transpose(1, 2))).transpose(1, 2)
        else:  # each window's mean over its valid steps
            limit = torch.tensor([[steps]]) if lengths is None else lengths.cpu()[:, None]
            counts = (torch.arange(padded.shape[1]).view(-1, self.stride) < limit[..., None]).sum(2)
            windows = padded.view(n, -1, self.stride, width).sum(2)
            shortened = windows / counts.clamp(min=1).unsqueeze(2).to(windows)
        if lengths is not None:
            lengths = torch.div(lengths + self.stride - 1, self.stride, rounding_mode="floor")
        return shortened, lengths

    def _pool(self, outputs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """The ``mean``, ``max`` or ``attention`` summary of ``[n, T, H]`` over the valid steps."""
        valid = None
        if lengths is not None:
            valid = (torch.arange(outputs.shape[1]) < lengths.cpu()[:, None]).to(outputs.device).unsqueeze(2)
        if self.summary == "mean":
            if valid is None:
                return outputs.mean(1)
            return (outputs * valid).sum(1) / valid.sum(1)
        if self.summary == "max":
            return (outputs if valid is None else outputs.masked_fill(~valid, -torch.inf)).amax(1)
        assert self.attention is not None
        scores = self.attention(outputs)
        if valid is not None:
            scores = scores.masked_fill(~valid, -torch.inf)
        return (torch.softmax(scores, dim=1) * outputs).sum(1)


@torch.inference_mode()
def predict_in_chunks(network: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """A network's outputs for many rows, ``PREDICT_CHUNK`` rows per forward pass, in eval mode.

    Args:
        network: a ``SequenceModel`` (or anything called as ``network(x, lengths)``).
        x: inputs ``[n, T, ...]``.
        lengths: true lengths ``[n]`` of zero-padded ``x`` (a chunk is cut to its longest
            sequence), or None.

    Returns:
        The outputs ``[n, out_dim]``, on the network's device (each chunk of ``x`` is moved
        there: a network trained on CUDA scores rows kept on the CPU).
    """
    network.eval()
    device = next(network.parameters()).device
    outputs = []
    for start in range(0, len(x), PREDICT_CHUNK):
        chunk = slice(start, start + PREDICT_CHUNK)
        chunk_lengths = None if lengths is None else lengths[chunk]
        x_chunk = x[chunk] if chunk_lengths is None else x[chunk, : int(chunk_lengths.max())]
        outputs.append(network(x_chunk.to(device), chunk_lengths))
    return torch.cat(outputs)


class StackedSequenceModel(nn.Module):
    """``k`` independent unidirectional :class:`SequenceModel` s over numeric fixed-length
    sequences, run as one batched computation.

    Every weight is stacked along a leading slot dimension, so slot ``g`` computes exactly
    what model ``g`` computes (same equations, same weights; only the rounding of the
    batched matrix products may differ) and its gradients never touch another slot: a
    slot-wise optimizer (Adam is elementwise) trains the ``k`` models independently.

    Args:
        models: the models, one per slot, all of one architecture.

    Raises:
        ValueError: for bidirectional or token-input models, or models of different shapes.
    """

    def __init__(self, models: list[SequenceModel]):
        super().__init__()
        first = models[0]
        if first.rnn.bidirectional or first.embedding is not None or first.summary != "last" or first.stride > 1:
            raise ValueError("only unidirectional models over numeric inputs, read to their last state, can be stacked")
        self.cell = next(name for name, cls in CELLS.items() if type(first.rnn) is cls)
        self.num_layers = first.rnn.num_layers
        self.hidden_size = first.rnn.hidden_size
        self.dropout = first.dropout.p
        self._arguments: dict[str, Any] = {
            "cell": self.cell, "hidden_size": self.hidden_size, "out_dim": first.head.out_features,
            "n_features": first.rnn.input_size, "num_layers": self.num_layers, "dropout": self.dropout,
        }
        states = [m.state_dict() for m in models]
        self.names = list(states[0])  # the SequenceModel state_dict names, in order
        self.weights = nn.ParameterDict()
        for name in states[0]:
            tensors = [s[name] for s in states]
            if any(t.shape != tensors[0].shape for t in tensors):
                raise ValueError(f"the models differ in {name}: {[tuple(t.shape) for t in tensors]}")
            self.weights[_key(name)] = nn.Parameter(torch.stack(tensors))

    @property
    def slots(self) -> int:
        """How many models are stacked."""
        return len(next(iter(self.weights.values())))

    def weight(self, name: str) -> torch.Tensor:
        """The stacked ``[slots, ...]`` tensor of the ``SequenceModel`` weight ``name``."""
        return self.weights[_key(name)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[slots, n, T, F]`` to outputs ``[slots, n, out_dim]``."""
        seq = x.transpose(1, 2)  # time-major [slots, T, n, F]: each step's rows are contiguous
        for layer in range(self.num_layers - 1):
            seq = F.dropout(torch.stack(self._layer(layer, seq), 1), self.dropout, self.training)
        last = self._layer(self.num_layers - 1, seq)[-1]
        head = self.weight("head.weight").transpose(1, 2)
        return torch.baddbmm(self.weight("head.bias").unsqueeze(1), F.dropout(last, self.dropout, self.training), head)

    def _layer(self, layer: int, seq: torch.Tensor) -> list[torch.Tensor]:
        """One recurrent layer over ``seq`` ``[slots, T, n, F]``: its state after each step."""
        slots, steps, n, width = seq.shape
        w_ih = self.weight(f"rnn.weight_ih_l{layer}").transpose(1, 2)
        w_hh = self.weight(f"rnn.weight_hh_l{layer}").transpose(1, 2)
        b_ih = self.weight(f"rnn.bias_ih_l{layer}").unsqueeze(1)
        b_hh = self.weight(f"rnn.bias_hh_l{layer}").unsqueeze(1)
        size = self.hidden_size
        # Every step's input projection in one product; a GRU keeps b_hh inside its reset gate.
        bias = b_ih if self.cell == "gru" else b_ih + b_hh
        projected = torch.baddbmm(bias, seq.reshape(slots, steps * n, width), w_ih).view(slots, steps, n, -1)
        h: torch.Tensor | None = None
        c: torch.Tensor | None = None
        states = []
        for xp in projected.unbind(1):
            if self.cell == "lstm":
                gates = xp if h is None else torch.baddbmm(xp, h, w_hh)
                i, f, _, o = torch.sigmoid(gates).chunk(4, 2)
                g = torch.tanh(gates[..., 2 * size : 3 * size])
                c = i * g if c is None else torch.addcmul(i * g, f, c)
                h = o * torch.tanh(c)
            elif self.cell == "gru":
                hp = b_hh.expand(slots, n, -1) if h is None else torch.baddbmm(b_hh, h, w_hh)
                r, z = torch.sigmoid(xp[..., : 2 * size] + hp[..., : 2 * size]).chunk(2, 2)
                candidate = torch.tanh(torch.addcmul(xp[..., 2 * size :], r, hp[..., 2 * size :]))
                h = candidate * (1 - z) if h is None else torch.lerp(candidate, h, z)
            else:
                h = torch.tanh(xp if h is None else torch.baddbmm(xp, h, w_hh))
            states.append(h)
        return states

    def export(self, slot: int) -> SequenceModel:
        """Slot ``slot``'s model as a standalone ``SequenceModel`` (weights copied)."""
        with torch.random.fork_rng(devices=[]):  # its random initial weights are overwritten: leave the RNG as it was
            model = SequenceModel(**self._arguments).to(next(iter(self.weights.values())).device)
        model.load_state_dict(self.state(slot))
        return model

    def state(self, slot: int) -> dict[str, torch.Tensor]:
        """A copy of slot ``slot``'s weights, by ``SequenceModel`` ``state_dict`` name."""
        return {name: self.weight(name)[slot].detach().clone() for name in self.names}

    def keep_slots(self, keep: list[int]) -> None:
        """Drop every slot not listed in ``keep``. The weights become new ``Parameter`` s: an
        optimizer over the old ones must be rebuilt."""
        index = torch.tensor(keep, device=next(iter(self.weights.values())).device)
        for key, tensor in list(self.weights.items()):
            self.weights[key] = nn.Parameter(tensor.detach().index_select(0, index))


def _key(name: str) -> str:
    """A ``state_dict`` name as a ``ParameterDict`` key (which may not contain dots)."""
    return name.replace(".", "__")
