"""The character language model (task = "shakespeare"): the corpus as windows, causal Loihi
timing (delays = "aligned"), streaming generation that equals the full-sequence forward, the
``generate`` command and its one-line errors."""

from __future__ import annotations

import json
import time

import pytest
import torch

from spikeformer.cli import main
from spikeformer.config import SHAKESPEARE_VOCABULARY, Config
from spikeformer.data import CharWindows, encode_text, load_shakespeare_split, ngram_bits_per_char
from spikeformer.errors import ConfigError
from spikeformer.generate import Stream, encode_prompt, generate
from spikeformer.model import build_model

V = SHAKESPEARE_VOCABULARY


def lm(seed: int = 0, **overrides) -> torch.nn.Module:
    """A small eval-mode language model with BatchNorm statistics that are not the identity."""
    kw = dict(task="shakespeare", mode="causal", context=12, dim=32, heads=2, head_dim=8, depth=2,
              steps_per_token=1, delays="aligned")
    kw.update(overrides)
    cfg = Config(**kw)
    torch.manual_seed(seed)
    model = build_model(cfg, cfg.context, V, V)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def one_hot(ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(ids, V).float()[None]


@pytest.fixture(scope="module")
def shakespeare():
    return load_shakespeare_split(64)


def test_windows_predict_the_next_character_and_split_by_position(shakespeare):
    from spikeformer.corpora import shakespeare as corpus

    text = corpus()
    split = shakespeare
    assert split.x_train.shape == ((len(text.train) - 1) // 64, 64, V) and split.num_classes == V
    assert split.vocabulary == text.vocabulary and len(split.vocabulary) == V
    decode = lambda ids: "".join(split.vocabulary[i] for i in ids)  # noqa: E731
    assert decode(split.x_train[0][0].argmax(-1)) == text.train[:64]
    assert decode(split.y_train[0]) == text.train[1:65]  # each label is the next character
    assert decode(split.x_train[5][0].argmax(-1)) == text.train[320:384]  # consecutive, not overlapping
    assert decode(split.x_test[0][0].argmax(-1)) == text.validation[:64]  # validation starts at the cut
    last = len(split.y_test) - 1
    assert decode(split.y_test[last]) == text.validation[last * 64 + 1:(last + 1) * 64 + 1]
    batch = split.x_train[torch.tensor([3, 1])]
    assert batch.shape == (2, 64, V) and batch.sum(-1).eq(1).all()


def test_char_windows_of_a_short_text():
    ids = encode_text("abcabcab", "abc")
    windows = CharWindows(ids, 3, 3)
    assert len(windows) == 2 and windows.targets().tolist() == [[1, 2, 0], [1, 2, 0]]
    assert windows[1:][0].argmax(-1).tolist() == [0, 1, 2]


def test_ngram_baselines_order_themselves():
    text = torch.tensor([0, 1] * 200)  # alternating: the bigram knows the next character
    scores = ngram_bits_per_char(text, text, 2)
    assert scores["unigram_bits_per_char"] == pytest.approx(1.0, abs=1e-3)
    assert scores["bigram_bits_per_char"] < 0.02


@pytest.mark.parametrize("overrides", [dict(), dict(steps_per_token=2, alpha=0.5), dict(delays="none"),
                                       dict(variant="delta"), dict(variant="stdp", depth=1)])
def test_streaming_one_character_at_a_time_equals_the_full_forward(overrides):
    model = lm(**overrides)
    ids = torch.randint(0, V, (12,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(one_hot(ids))  # [1, 12, V]
    stream = Stream(model, model.cfg)
    parts = [stream.feed(ids[:4])] + [stream.feed(ids[i:i + 1]) for i in range(4, 12)]
    torch.testing.assert_close(torch.cat(parts), full[0], rtol=0, atol=1e-6)
    assert full.abs().max() > 0.1  # the readout is not silent


@pytest.mark.parametrize("timing,leaks", [("aligned", False), ("none", False), ("loihi", True)])
def test_only_aligned_loihi_timing_keeps_the_model_causal(timing, leaks):
    """With loihi delays a character reaches the readout 2 steps after it enters through the
    residual skips but 10 steps through the sublayers, so the window of character n also holds
    characters after n; aligned skips close that path (and the config refuses loihi for an LM)."""
    model = lm(delays="none" if timing == "none" else "aligned")
    if timing == "loihi":  # the same network with the skips undelayed: what delays = "loihi" builds
        for block in model.blocks:
            block.skip_delay = 0
    ids = torch.randint(0, V, (12,), generator=torch.Generator().manual_seed(2))
    later = ids.clone()
    later[8:] = (later[8:] + 5) % V
    with torch.no_grad():
        a, _ = model(one_hot(ids))
        b, _ = model(one_hot(later))
    changed = float((a[0, :8] - b[0, :8]).abs().max())  # characters before the change
    assert (changed > 1e-4) == leaks, changed
    assert (a[0, 8:] - b[0, 8:]).abs().max() > 1e-4  # the change is seen where it may be


def test_a_language_model_with_loihi_delays_is_refused():
    with pytest.raises(ConfigError, match="aligned"):
        Config(task="shakespeare", mode="causal", delays="loihi")
    with pytest.raises(ConfigError, match="sequence task"):
        Config(task="shakespeare")
    with pytest.raises(ConfigError, match="bptt"):
        Config(task="shakespeare", mode="causal", rule="eprop")


def test_ann_baseline_reads_a_prefix_and_predicts_every_token():
    cfg = Config(task="shakespeare", mode="causal", model="ann", context=12, dim=32, heads=2, head_dim=8, depth=1)
    torch.manual_seed(0)
    model = build_model(cfg, 12, V, V).eval()
    ids = torch.randint(0, V, (12,))
    with torch.no_grad():
        full, _ = model(one_hot(ids))
        prefix, _ = model(one_hot(ids[:5]))
    assert full.shape == (1, 12, V)
    torch.testing.assert_close(prefix[0], full[0, :5], rtol=0, atol=1e-5)  # causal: later tokens unseen


def test_prompts_outside_the_vocabulary_are_one_line():
    with pytest.raises(ConfigError, match="empty"):
        encode_prompt("", "abc")
    with pytest.raises(ConfigError, match=r"'é' \(U\+00E9\) is not in the model's 3-character vocabulary"):
        encode_prompt("abé", "abc")
    model = lm()
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, model.cfg, "x" * V, "x", 5, temperature=-1.0)


def test_generation_is_seeded_and_greedy_at_temperature_zero():
    model = lm()
    vocabulary = "".join(chr(32 + i) for i in range(V))
    a = "".join(generate(model, model.cfg, vocabulary, "ab", 20, 1.0, seed=3))
    b = "".join(generate(model, model.cfg, vocabulary, "ab", 20, 1.0, seed=3))
    assert a == b and len(a) == 20
    greedy = "".join(generate(model, model.cfg, vocabulary, "ab", 6, 0.0))
    ids = [vocabulary.index(c) for c in "ab"]
    with torch.no_grad():
        for c in greedy:  # each greedy character is the full forward's argmax after the text so far
            logits, _ = model(one_hot(torch.tensor(ids)))
            assert vocabulary[int(logits[0, -1].argmax())] == c
            ids.append(vocabulary.index(c))


def test_a_tiny_language_model_trains_and_generates_quickly(tmp_path, capsys):
    """train -> metrics (loss in nats and bits, speeds, n-gram baselines) -> generate, in < 30 s."""
    start = time.perf_counter()
    config = tmp_path / "lm.toml"
    config.write_text('task = "shakespeare"\nmode = "causal"\ncontext = 32\ntrain_size = 512\ndim = 32\n'
                      'heads = 2\nhead_dim = 8\ndepth = 1\nsteps_per_token = 1\ndelays = "aligned"\nepochs = 2\n'
                      'batch_size = 32\nlr = 0.01\n')
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    first, last = metrics["history"][0], metrics["history"][-1]
    assert last["test_loss"] < 4.0 < 4.43  # below uniform guessing over 84 characters (ln 84 = 4.43)
    assert metrics["val_loss_nats"] == last["test_loss"] and first["test_loss"] > 0
    assert metrics["val_bits_per_char"] == pytest.approx(last["test_loss"] / 0.6931471805599453)
    assert metrics["tokens_per_second"] > 0 and metrics["generate_tokens_per_second"] > 0
    assert 3.0 < metrics["bigram_bits_per_char"] < metrics["unigram_bits_per_char"] < 6.0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "ROMEO:", "--chars", "40", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 40 + 1
    assert time.perf_counter() - start < 30


def test_generate_refuses_a_classifier_and_a_bad_prompt_in_one_line(tmp_path, capsys):
    from spikeformer.checkpoint import save_checkpoint

    cfg = Config(task="digits", dim=16, heads=2, head_dim=4, depth=1)
    save_checkpoint(tmp_path / "digits", build_model(cfg, 16, 4, 10), None,
                    {"config": cfg.to_dict(), "epoch": 0, "history": [], "train_seconds": 0.0})
    assert main(["generate", str(tmp_path / "digits")]) == 2
    assert "not a language model" in capsys.readouterr().err
    model = lm()
    save_checkpoint(tmp_path / "lm", model, None, {"config": model.cfg.to_dict(), "epoch": 0, "history": [],
                                                   "train_seconds": 0.0, "vocabulary": "".join(chr(32 + i) for i in range(V))})
    assert main(["generate", str(tmp_path / "lm"), "--prompt", "caf\u00e9"]) == 2
    err = capsys.readouterr()
    assert "U+00E9" in err.err and err.out == ""  # nothing printed before the refusal
    assert main(["generate", str(tmp_path / "lm"), "--prompt", ""]) == 2
