"""Top-down modulation (``top_down = "readout" | "block"``): a bottom-up sweep, then the modulated
sweep whose attention gates hear the bottom-up signals one step late (docs/equations.md)."""

import pytest
import torch

from neuromorphic.ir import LoweringError
from neuromorphic.lower import lower
from spikeformer.config import Config, ConfigError
from spikeformer.metrics import count_params
from spikeformer.model import build_model, encode
from spikeformer.train import recalibrate_norms

TOKENS, FEATURES, CLASSES = 4, 16, 10  # digits: 4 patches of 4x4 pixels


def model_of(top_down: str, depth: int = 2, **kw):
    cfg = Config(task="digits", patch_size=4, dim=16, heads=2, head_dim=8, depth=depth, variant="three_factor",
                 delays="loihi", top_down=top_down, **kw)
    torch.manual_seed(0)
    return build_model(cfg, TOKENS, FEATURES, CLASSES).double(), cfg


def digits(batch: int = 6) -> torch.Tensor:
    return torch.rand(batch, TOKENS, FEATURES, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4


@pytest.mark.parametrize("top_down", ["readout", "block"])
def test_zero_top_down_weights_give_the_bottom_up_model(top_down):
    """The top-down synapses start at zero: the modulated sweep then repeats the bottom-up sweep,
    so the model computes what the same weights compute without top-down, values and gradients."""
    modulated, _ = model_of(top_down)
    plain, _ = model_of("none")
    missing, unexpected = plain.load_state_dict(modulated.state_dict(), strict=False)
    assert not missing and all(k.startswith("top_down.") for k in unexpected) and unexpected
    x = digits()
    for train in (True, False):
        modulated.train(train), plain.train(train)
        y_td, _ = modulated(x)
        y, _ = plain(x)
        torch.testing.assert_close(y_td, y, rtol=0, atol=1e-12)
    modulated.train(), plain.train()
    modulated(x)[0].square().sum().backward()
    plain(x)[0].square().sum().backward()
    grads = dict(plain.named_parameters())
    for name, p in modulated.named_parameters():
        if name.startswith("top_down."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name  # it can learn from zero
        else:  # both sweeps share the weights: the bottom-up sweep's gradient is the plain one
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("top_down", ["readout", "block"])
def test_top_down_reaches_the_gates_one_step_late_and_streams_exactly(top_down):
    model, cfg = model_of(top_down)
    with torch.no_grad():
        for dense in model.top_down:
            dense.linear.weight.normal_(0.0, 10.0)
    recalibrate_norms(model, digits(32), "cpu", 32, torch.Generator())  # statistics that make the layers spike
    model.eval()
    plain, _ = model_of("none")
    plain.load_state_dict(model.state_dict(), strict=False)
    plain.eval()
    x_t = model.encode_input(digits())
    with torch.no_grad():
        y, state = model.forward_steps(x_t)
        y_plain, _ = plain.forward_steps(x_t)
        assert not torch.allclose(y, y_plain)  # the feedback changes the computation
        # the top-down current is zero at step 0, so the gates first differ at step 1; the shortest
        # path on to the readout (attention, its out Dense, the final LIF, the readout Dense) takes
        # two more Dense steps: the readout current is the bottom-up one through step 2
        torch.testing.assert_close(y[:3], y_plain[:3], rtol=0, atol=0)
        assert not torch.allclose(y[3:], y_plain[3:])
        head, carry = model.forward_steps(x_t[:5])
        tail, carry = model.forward_steps(x_t[5:], carry)
    torch.testing.assert_close(torch.cat([head, tail]), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(carry["bottom_up"]["lif"].membrane, state["bottom_up"]["lif"].membrane)


def test_top_down_synapses_count_as_attention_parameters():
    plain, _ = model_of("none")
    for top_down, source in (("readout", CLASSES), ("block", 16)):
        model, _ = model_of(top_down)
        assert count_params(model)[1] - count_params(plain)[1] == 2 * source * 2  # depth x source x heads


def test_config_and_export_refuse_what_top_down_cannot_do():
    with pytest.raises(ConfigError, match="variant = 'hebbian' \\(needs 'three_factor'\\)"):
        Config(task="digits", top_down="readout")
    with pytest.raises(ConfigError, match="top_down"):
        Config(task="digits", variant="three_factor", top_down="readout", model="ann")
    with pytest.raises(ConfigError, match="choose one of"):
        Config(task="digits", variant="three_factor", top_down="sideways")
    model, _ = model_of("readout")
    with pytest.raises(LoweringError, match="top_down 'readout' feeds the gates"):
        lower(model.eval())


def test_encode_unchanged_by_top_down():
    _, cfg = model_of("readout")
    x = digits(2)
    assert torch.equal(encode(x, cfg), encode(x, Config(task="digits", patch_size=4)))
