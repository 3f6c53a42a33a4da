"""A faithful Python 3 port of the seed's min-char-rnn training loop: the oracle for parity tests and
the baseline of bench/engine.py. Only the Python 2 idioms changed (xrange, print); the math, the loop
order and the one-hot column vectors are the seed's. Weights come in from outside so tests can start
both implementations from the same state."""
import numpy as np


class SeedRNN:
    def __init__(self, data_ix, vocab_size, Wxh, Whh, Why, bh, by, seq_length, learning_rate):
        self.data = data_ix  # list/array of character indices (the seed's char_to_ix applied)
        self.vocab_size = vocab_size
        self.Wxh, self.Whh, self.Why = Wxh.copy(), Whh.copy(), Why.copy()
        self.bh, self.by = bh.copy(), by.copy()
        self.seq_length, self.learning_rate = seq_length, learning_rate
        self.hidden_size = Whh.shape[0]
        self.mWxh, self.mWhh, self.mWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
        self.mbh, self.mby = np.zeros_like(bh), np.zeros_like(by)
        self.smooth_loss = -np.log(1.0 / vocab_size) * seq_length
        self.n, self.p = 0, 0
        self.hprev = np.zeros((self.hidden_size, 1))

    def lossFun(self, inputs, targets, hprev):
        Wxh, Whh, Why, bh, by, vocab_size = self.Wxh, self.Whh, self.Why, self.bh, self.by, self.vocab_size
        xs, hs, ys, ps = {}, {}, {}, {}
        hs[-1] = np.copy(hprev)
        loss = 0
        for t in range(len(inputs)):
            xs[t] = np.zeros((vocab_size, 1))
            xs[t][inputs[t]] = 1
            hs[t] = np.tanh(np.dot(Wxh, xs[t]) + np.dot(Whh, hs[t - 1]) + bh)
            ys[t] = np.dot(Why, hs[t]) + by
            ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))
            loss += -np.log(ps[t][targets[t], 0])
        dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
        dbh, dby = np.zeros_like(bh), np.zeros_like(by)
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(len(inputs))):
            dy = np.copy(ps[t])
            dy[targets[t]] -= 1
            dWhy += np.dot(dy, hs[t].T)
            dby += dy
            dh = np.dot(Why.T, dy) + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            dbh += dhraw
            dWxh += np.dot(dhraw, xs[t].T)
            dWhh += np.dot(dhraw, hs[t - 1].T)
            dhnext = np.dot(Whh.T, dhraw)
        for dparam in [dWxh, dWhh, dWhy, dbh, dby]:
            np.clip(dparam, -5, 5, out=dparam)
        return loss, dWxh, dWhh, dWhy, dbh, dby, hs[len(inputs) - 1]

    def step(self):
        """One iteration of the seed's while loop; returns its (summed) loss."""
        data, seq_length = self.data, self.seq_length
        if self.p + seq_length + 1 >= len(data) or self.n == 0:
            self.hprev = np.zeros((self.hidden_size, 1))
            self.p = 0
        inputs = [int(c) for c in data[self.p:self.p + seq_length]]
        targets = [int(c) for c in data[self.p + 1:self.p + seq_length + 1]]
        loss, dWxh, dWhh, dWhy, dbh, dby, self.hprev = self.lossFun(inputs, targets, self.hprev)
        self.smooth_loss = self.smooth_loss * 0.999 + loss * 0.001
        for param, dparam, mem in zip([self.Wxh, self.Whh, self.Why, self.bh, self.by],
                                      [dWxh, dWhh, dWhy, dbh, dby],
                                      [self.mWxh, self.mWhh, self.mWhy, self.mbh, self.mby]):
            mem += dparam * dparam
            param += -self.learning_rate * dparam / np.sqrt(mem + 1e-8)
        self.p += seq_length
        self.n += 1
        return loss
