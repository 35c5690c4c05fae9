"""The reference recurrent modules: SVG's names and math, hierarchy, state rules, errors."""

import pytest
import torch

from hafsvg_kernels import LSTM, GaussianLSTM, HierarchicalGaussianLSTM, gaussian_lstm_step
from tests._svg_reference import SVGLSTM, SVGGaussianLSTM, rel_err


def test_lstm_state_dict_round_trip_and_outputs_match_svg():
    torch.manual_seed(0)
    svg = SVGLSTM(12, 5, 16, 2, batch_size=3).double()
    svg.hidden = svg.init_hidden()
    ours = LSTM(12, 5, 16, 2).double()
    ours.load_state_dict(svg.state_dict())
    assert set(ours.state_dict()) == set(svg.state_dict())
    x = torch.randn(4, 3, 12, dtype=torch.float64)
    for t in range(4):
        assert rel_err(ours(x[t]), svg(x[t])) < 1e-12
    svg.load_state_dict(ours.state_dict())  # and back


def test_gaussian_lstm_matches_svg_with_same_noise():
    torch.manual_seed(1)
    svg = SVGGaussianLSTM(10, 6, 16, 1, batch_size=5).double()
    svg.hidden = svg.init_hidden()
    ours = GaussianLSTM(10, 6, 16, 1).double()
    ours.load_state_dict(svg.state_dict())
    for _ in range(3):
        x, eps = torch.randn(5, 10, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
        for a, b in zip(ours(x, eps), svg(x, eps)):
            assert rel_err(a, b) < 1e-12


def test_hierarchical_with_one_group_is_svg_gaussian_lstm():
    torch.manual_seed(2)
    svg = SVGGaussianLSTM(10, 8, 16, 2, batch_size=4).double()
    svg.hidden = svg.init_hidden()
    hier = HierarchicalGaussianLSTM(10, 8, 16, 2, groups=1).double()
    hier.groups[0].load_state_dict(svg.state_dict())
    state = hier.init_state(4)
    for _ in range(3):
        x, eps = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
        ours, state = hier.step(x, state, eps)
        for a, b in zip(ours, svg(x, eps)):
            assert rel_err(a, b) < 1e-12


def test_hierarchical_groups_read_earlier_samples():
    """Group j's input is [x, z^{1:j-1}]: a hand-rolled chain of plain Gaussian LSTMs agrees,
    and with ``cond`` the groups read cond's samples instead."""
    torch.manual_seed(3)
    hier = HierarchicalGaussianLSTM(6, 12, 8, 1, groups=3).double()
    x, eps = torch.randn(5, 6, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64)
    cond = torch.randn(5, 12, dtype=torch.float64)
    for c in (None, cond):
        (z, mu, logvar), _ = hier.step(x, hier.init_state(5), eps, cond=c)
        prev = []
        for j, g in enumerate(hier.groups):
            inp = x
            if j:
                inp = torch.cat([x, torch.cat(prev, 1) if c is None else c[:, : 4 * j]], 1)
            (zj, muj, lvj), _ = g.step(inp, g.init_state(5), eps[:, 4 * j : 4 * j + 4])
            prev.append(zj)
            assert rel_err(z[:, 4 * j : 4 * j + 4], zj) < 1e-12
            assert rel_err(mu[:, 4 * j : 4 * j + 4], muj) < 1e-12
            assert rel_err(logvar[:, 4 * j : 4 * j + 4], lvj) < 1e-12
    own, conditioned = (hier.step(x, hier.init_state(5), eps, cond=c)[0][0] for c in (None, cond))
    assert not torch.allclose(own, conditioned)


def test_stateful_interface_rules():
    m = GaussianLSTM(4, 2, 8, 1, batch_size=3)
    m.hidden = m.init_hidden()
    assert m(torch.randn(3, 4))[0].shape == (3, 2)
    with pytest.raises(ValueError, match="init_hidden"):
        m(torch.randn(5, 4))
    m.hidden = m.init_hidden(5)
    assert m(torch.randn(5, 4))[0].shape == (5, 2)
    with pytest.raises(ValueError, match="batch_size"):
        GaussianLSTM(4, 2, 8, 1).init_hidden()


def test_noise_from_generator_is_reproducible():
    m = HierarchicalGaussianLSTM(4, 6, 8, 1, groups=2)
    x = torch.randn(3, 4)
    a = m.step(x, m.init_state(3), generator=torch.Generator().manual_seed(7))[0][0]
    b = m.step(x, m.init_state(3), generator=torch.Generator().manual_seed(7))[0][0]
    c = m.step(x, m.init_state(3), generator=torch.Generator().manual_seed(8))[0][0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_torch_backend_reads_a_device_offset():
    """A one-element int64 tensor offset: the torch backend seeds its generator with the value."""
    m = HierarchicalGaussianLSTM(4, 6, 8, 1, groups=2)
    x, states, weights = torch.randn(3, 4), m.init_state(3), tuple(g.weights() for g in m.groups)
    with torch.no_grad():
        ref = gaussian_lstm_step(x, states, weights, seed=5, offset=18, backend="torch")[0]
        for offset in (torch.tensor(18), torch.tensor([18])):
            assert torch.equal(gaussian_lstm_step(x, states, weights, seed=5, offset=offset, backend="torch")[0], ref)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (lambda a: a.update(x=torch.randn(3, 5)), ValueError, "x has shape"),
        (lambda a: a.update(eps=torch.randn(3, 7)), ValueError, "eps has shape"),
        (lambda a: a.update(eps=torch.randn(3, 6, dtype=torch.float64)), TypeError, "eps has dtype"),
        (lambda a: a.update(x=torch.ones(3, 4, dtype=torch.long)), TypeError, "x has dtype"),
        (lambda a: a.update(states=a["states"][:1]), ValueError, "1 states for 2 groups"),
        (lambda a: a.update(cond=torch.randn(2, 6)), ValueError, "cond has shape"),
    ],
)
def test_gaussian_step_rejects_bad_input(change, exc, match):
    m = HierarchicalGaussianLSTM(4, 6, 8, 1, groups=2)
    args = dict(x=torch.randn(3, 4), states=m.init_state(3), eps=torch.randn(3, 6), cond=None)
    change(args)
    with pytest.raises(exc, match=match):
        gaussian_lstm_step(args["x"], args["states"], tuple(g.weights() for g in m.groups), args["eps"], args["cond"])


def test_hierarchical_rejects_groups_not_dividing_z():
    with pytest.raises(ValueError, match="divide"):
        HierarchicalGaussianLSTM(4, 6, 8, 1, groups=4)
