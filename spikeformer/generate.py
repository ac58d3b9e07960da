"""Streaming text from a trained character language model (``task = "shakespeare"``).

The spiking model reads one character at a time: each character is held for ``steps_per_token``
steps and every state (membranes, synaptic currents, delay lines, the attention memory S)
carries over to the next, so the cost per character does not grow with the text. With Loihi
timing (``delays = "loihi"``) a character's prediction leaves the readout ``latency`` steps after
it entered; those steps are run ahead on silence from a copy of the state and then dropped
(``lookahead``). What enters after a character cannot reach its readout window, so this is the
exact prediction that training scored, not an approximation.

The ANN baseline has no state to carry: it reruns on the last ``context`` characters.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, load_model_weights
from .config import Config, config_from_dict
from .errors import ConfigError
from .model import Spikeformer, State, build_model, encode


def load_language_model(run: str | Path) -> tuple[Config, nn.Module, str]:
    """``(config, model in eval mode, vocabulary)`` of a language-model run, without reading the
    corpus (the vocabulary is saved in the checkpoint); works on any run with one finished epoch."""
    meta, weights, _ = load_checkpoint(run)
    cfg = config_from_dict(meta.get("config", {}), source=str(Path(run) / "checkpoint.json"))
    if not cfg.every_token:
        raise ConfigError(f"run {run} is a {cfg.task} classifier, not a language model; generate needs a run "
                          "trained with task = \"shakespeare\"")
    tokens, features, classes = cfg.task_shape()
    vocabulary = meta.get("vocabulary")
    if not (isinstance(vocabulary, str) and len(vocabulary) == classes and len(set(vocabulary)) == classes):
        raise ConfigError(f"run {run} has no valid vocabulary of {classes} characters in checkpoint.json; "
                          "the checkpoint is damaged, restore it or retrain")
    model = build_model(cfg, tokens, features, classes)
    load_model_weights(model, weights)
    return cfg, model.eval(), vocabulary


def encode_prompt(prompt: str, vocabulary: str) -> Tensor:
    """The prompt's character indices ``[P]``; an empty prompt or a character outside the
    vocabulary is refused (named, with its code point) before anything runs."""
    if not prompt:
        raise ConfigError("--prompt is empty; give at least one character, e.g. --prompt \"ROMEO:\"")
    unknown = sorted(set(prompt) - set(vocabulary))
    if unknown:
        named = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown)
        raise ConfigError(f"prompt character {named} is not in the model's {len(vocabulary)}-character vocabulary "
                          "(the corpus' ASCII letters, digits, punctuation, space and newline); nothing was "
                          "generated: replace or remove it")
    index = {c: i for i, c in enumerate(vocabulary)}
    return torch.tensor([index[c] for c in prompt], dtype=torch.long)


class Stream:
    """A spiking language model fed one character at a time: ``feed(ids) -> next-character logits [C]``.

    ``state`` is the model state after the characters fed so far."""

    def __init__(self, model: Spikeformer, cfg: Config) -> None:
        self.model, self.cfg = model, cfg
        self.state: Optional[State] = None

    @torch.no_grad()
    def feed(self, ids: Tensor) -> Tensor:
        """Characters ``[P]`` (indices) -> logits ``[P, C]`` of the character after each one."""
        x = nn.functional.one_hot(ids, self.model.features).float()[None]  # [1, P, V]
        x_t = encode(x, self.cfg)  # [P * r, 1, 1, V]
        y, self.state = self.model.forward_steps(x_t, self.state)  # [P * r, 1, C]
        latency = self.model.latency
        if latency:  # run the windows out on silence; that state is dropped (forward_steps never mutates one)
            ahead, _ = self.model.forward_steps(x_t.new_zeros(latency, *x_t.shape[1:]), self.state)
            y = torch.cat([y, ahead], 0)
        return self.model.token_logits(y, len(ids))[0]


def sample(logits: Tensor, temperature: float, generator: torch.Generator) -> int:
    """One index drawn from ``softmax(logits / temperature)`` ``[C]``; temperature 0 is argmax."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.double() / temperature, -1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(model: nn.Module, cfg: Config, vocabulary: str, prompt: str, chars: int,
             temperature: float = 0.8, seed: int = 0) -> Iterator[str]:
    """An iterator over ``chars`` characters continuing ``prompt``, each yielded as soon as it is
    drawn. The arguments are checked here, before the first character is asked for."""
    if chars < 0:
        raise ConfigError(f"--chars must be >= 0, got {chars}")
    if not temperature >= 0:
        raise ConfigError(f"--temperature must be >= 0 (0: always the likeliest character), got {temperature}")
    return _characters(model, cfg, vocabulary, encode_prompt(prompt, vocabulary), chars, temperature,
                       torch.Generator().manual_seed(seed))


def _characters(model: nn.Module, cfg: Config, vocabulary: str, ids: Tensor, chars: int, temperature: float,
                generator: torch.Generator) -> Iterator[str]:
    if isinstance(model, Spikeformer):
        stream = Stream(model, cfg)
        logits = stream.feed(ids)[-1]
        for _ in range(chars):
            c = sample(logits, temperature, generator)
            yield vocabulary[c]
            logits = stream.feed(torch.tensor([c]))[-1]
        return
    window = ids.tolist()
    with torch.no_grad():
        for _ in range(chars):  # the ANN reruns on its last `context` characters
            recent = torch.tensor(window[-cfg.context:])
            logits, _ = model(nn.functional.one_hot(recent, len(vocabulary)).float()[None])
            c = sample(logits[0, -1], temperature, generator)
            window.append(c)
            yield vocabulary[c]


def generation_speed(model: nn.Module, cfg: Config, vocabulary: str, chars: int = 200) -> dict[str, Any]:
    """Characters per second of ``generate`` (greedy, after the prompt "ROMEO:") and the seconds to the first."""
    start = time.perf_counter()
    stream = generate(model, cfg, vocabulary, "ROMEO:", chars, temperature=0.0)
    next(stream)
    first = time.perf_counter() - start
    for _ in stream:
        pass
    return {"generate_tokens_per_second": chars / (time.perf_counter() - start), "generate_first_seconds": first}
