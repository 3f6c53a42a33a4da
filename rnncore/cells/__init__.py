"""The recurrent cells. Each module holds one cell's equations, its forward pass over a window and its backward
pass through time, for one layer; rnncore.model stacks layers and adds the input and output layers.

A cell module has G (gate blocks in Wxh, Whh, bh), extra_biases(H), init_biases(arrays, H), carries (1 for h,
2 for h and c) and a Layer class: the buffers of one layer over one window, with load_ids (the first layer's
input, character ids) or load_rows (a lower layer's output), forward, final, backward and grad_Whh. The gated
cells share their layout and window-wide products (gates.py).
"""
from . import gru, lstm, rnn

CELLS = {"rnn": rnn, "lstm": lstm, "gru": gru}

__all__ = ["CELLS", "rnn", "lstm", "gru"]
