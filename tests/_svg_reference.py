"""Transcriptions of the SVG reference code's recurrent modules (Denton & Fergus, models/lstm.py),
built the way SVG builds them, for state_dict and equivalence tests."""

import torch
from torch import nn


class SVGLSTM(nn.Module):
    def __init__(self, input_size, output_size, hidden_size, n_layers, batch_size):
        super().__init__()
        self.input_size, self.output_size, self.hidden_size = input_size, output_size, hidden_size
        self.batch_size, self.n_layers = batch_size, n_layers
        self.embed = nn.Linear(input_size, hidden_size)
        self.lstm = nn.ModuleList([nn.LSTMCell(hidden_size, hidden_size) for _ in range(n_layers)])
        self.output = nn.Sequential(nn.Linear(hidden_size, output_size), nn.Tanh())
        self.hidden = self.init_hidden()

    def init_hidden(self):
        p = self.embed.weight  # SVG puts the state on the GPU; here on the weights' device and dtype
        z = lambda: torch.zeros(self.batch_size, self.hidden_size, dtype=p.dtype, device=p.device)  # noqa: E731
        return [(z(), z()) for _ in range(self.n_layers)]

    def forward(self, input):
        h_in = self.embed(input.view(-1, self.input_size))
        for i in range(self.n_layers):
            self.hidden[i] = self.lstm[i](h_in, self.hidden[i])
            h_in = self.hidden[i][0]
        return self.output(h_in)


class SVGGaussianLSTM(nn.Module):
    def __init__(self, input_size, output_size, hidden_size, n_layers, batch_size):
        super().__init__()
        self.input_size, self.output_size, self.hidden_size = input_size, output_size, hidden_size
        self.n_layers, self.batch_size = n_layers, batch_size
        self.embed = nn.Linear(input_size, hidden_size)
        self.lstm = nn.ModuleList([nn.LSTMCell(hidden_size, hidden_size) for _ in range(n_layers)])
        self.mu_net = nn.Linear(hidden_size, output_size)
        self.logvar_net = nn.Linear(hidden_size, output_size)
        self.hidden = self.init_hidden()

    def init_hidden(self):
        p = self.embed.weight  # SVG puts the state on the GPU; here on the weights' device and dtype
        z = lambda: torch.zeros(self.batch_size, self.hidden_size, dtype=p.dtype, device=p.device)  # noqa: E731
        return [(z(), z()) for _ in range(self.n_layers)]

    def reparameterize(self, mu, logvar, eps=None):
        """SVG draws eps inside (``logvar.data.new(...).normal_()``); tests may pass it in."""
        std = logvar.mul(0.5).exp()
        if eps is None:
            eps = std.new(std.size()).normal_()
        return eps.mul(std).add(mu)

    def forward(self, input, eps=None):
        h_in = self.embed(input.view(-1, self.input_size))
        for i in range(self.n_layers):
            self.hidden[i] = self.lstm[i](h_in, self.hidden[i])
            h_in = self.hidden[i][0]
        mu, logvar = self.mu_net(h_in), self.logvar_net(h_in)
        return self.reparameterize(mu, logvar, eps), mu, logvar


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
