"""The recurrent cells. Each module holds one cell's equations, its forward pass over a window and its backward
pass through time, for one layer; rnncore.model stacks layers and adds the input and output layers.

A cell module has G (gate blocks in Wxh, Whh, bh), extra_biases(H), init_biases(arrays, H), carries (1 for h,
2 for h and c) and a Layer class: the buffers of one layer over one window, with load / forward / backward.
"""
from . import gru, lstm, rnn

CELLS = {"rnn": rnn, "lstm": lstm, "gru": gru}

__all__ = ["CELLS", "rnn", "lstm", "gru"]
