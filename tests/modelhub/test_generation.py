"""Batched candidate generation: settings, determinism, order, chat templates, distinctness."""

import shutil

import pytest

from modelhub.ml.generation import (
    SamplingSettings,
    TransformersBackend,
    generate_distinct,
    normalise,
)

PROMPTS = [
    "Write a haiku about spring rain.",
    "Hi",
    "Explain, step by step and in plain words, why the sky looks blue on a clear day and "
    "red at sunset, for a curious ten-year-old who likes experiments.",
    [{"role": "user", "content": "我想学做红烧肉。"},
     {"role": "assistant", "content": "你一般炖多久？"},
     {"role": "user", "content": "大概20分钟。"}],
    "List three fruits.",
]
WARM = SamplingSettings(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7)


@pytest.fixture
def backend(tiny_model):
    return TransformersBackend(tiny_model, batch_size=2)


@pytest.mark.parametrize(("values", "message"), [
    ({"temperature": -0.1}, "temperature must be a number >= 0"),
    ({"temperature": float("nan")}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, r"top_p must be a number in \(0, 1\]"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_new_tokens": 0}, "max_new_tokens must be a whole number from 1 to 4096"),
    ({"max_new_tokens": 4097}, "max_new_tokens"),
    ({"max_new_tokens": 8.0}, "max_new_tokens"),
    ({"seed": -1}, "seed must be a whole number >= 0"),
    ({"seed": True}, "seed"),
])
def test_settings_refuse_invalid_values(values, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**values)


def test_settings_round_trip_through_a_dict():
    settings = SamplingSettings(temperature=0, top_p=0.9, max_new_tokens=5, seed=3)

    assert settings.to_dict() == {"temperature": 0.0, "top_p": 0.9, "max_new_tokens": 5,
                                  "seed": 3}
    assert SamplingSettings.from_dict(settings.to_dict()) == settings
    assert settings.greedy
    assert SamplingSettings.from_dict({"seed": 4}) == SamplingSettings(seed=4)
    with pytest.raises(ValueError, match="unknown sampling settings: top_k"):
        SamplingSettings.from_dict({"top_k": 5})


def test_each_prompt_gets_n_outputs_in_prompt_order(backend):
    # Echo each row's prompt instead of generating, to see where every output lands after
    # the length sort.
    def echo(batch, settings, batch_index, ignore_eos):
        return [backend.tokenizer.decode(ids) for ids in batch], 0

    backend._generate_batch = echo
    outputs = backend.generate(PROMPTS, WARM, n=3)

    assert [len(texts) for texts in outputs] == [3] * len(PROMPTS)
    for prompt, texts in zip(PROMPTS, outputs, strict=True):
        assert texts == [backend.render(prompt)[0]] * 3


def test_it_is_deterministic_for_a_seed_and_differs_for_another(backend, tiny_model):
    first = backend.generate(PROMPTS, WARM, n=2)

    assert backend.generate(PROMPTS, WARM, n=2) == first
    assert TransformersBackend(tiny_model, batch_size=2).generate(PROMPTS, WARM, n=2) == first
    other_seed = SamplingSettings(**{**WARM.to_dict(), "seed": 8})
    assert backend.generate(PROMPTS, other_seed, n=2) != first
    assert all(len(texts) == 2 for texts in first)


def test_greedy_batches_match_one_prompt_at_a_time(tiny_model):
    greedy = SamplingSettings(temperature=0, max_new_tokens=10)

    batched = TransformersBackend(tiny_model, batch_size=8).generate(PROMPTS, greedy)
    single = TransformersBackend(tiny_model, batch_size=1).generate(PROMPTS, greedy)

    # Left padding with an attention mask leaves each prompt's computation unchanged.
    assert batched == single


def test_chat_and_plain_prompts_go_through_the_chat_template(backend, tiny_model):
    chat, templated = backend.render(PROMPTS[3])
    assert templated
    assert chat == ("<|user|>\n我想学做红烧肉。<|end|>\n<|assistant|>\n你一般炖多久？<|end|>\n"
                    "<|user|>\n大概20分钟。<|end|>\n<|assistant|>\n")
    assert backend.render("Hi") == ("<|user|>\nHi<|end|>\n<|assistant|>\n", True)
    user = backend.tokenizer.convert_tokens_to_ids("<|user|>")
    assert backend.encode("Hi").count(user) == 1

    raw = TransformersBackend(tiny_model, wrap_plain_prompts=False)
    assert raw.render("Hi") == ("Hi", False)


def test_without_a_chat_template_a_chat_becomes_a_transcript(tiny_model, tmp_path):
    path = shutil.copytree(tiny_model, tmp_path / "base")
    (path / "chat_template.jinja").unlink()
    base = TransformersBackend(path)

    assert base.render("Hi") == ("Hi", False)
    assert base.render([{"role": "user", "content": "Hi"}]) == ("User: Hi\n\nAssistant:", False)
    assert len(base.generate([[{"role": "user", "content": "Hi"}]], WARM)[0]) == 1


def test_it_refuses_malformed_prompts(backend, tiny_model):
    with pytest.raises(ValueError, match="batch_size"):
        TransformersBackend(tiny_model, batch_size=0)
    with pytest.raises(ValueError, match="role, content"):
        backend.generate([[{"role": "user"}]], WARM)
    with pytest.raises(ValueError, match="list of prompts"):
        backend.generate("Hi", WARM)
    with pytest.raises(ValueError, match="n must be"):
        backend.generate(["Hi"], WARM, n=0)


def test_long_prompts_are_cut_on_the_left_and_too_many_new_tokens_refused(backend):
    long_prompt = "word " * 2000

    assert len(backend.generate([long_prompt], WARM)[0]) == 1
    with pytest.raises(ValueError, match="leaves no room"):
        backend.generate(["Hi"], SamplingSettings(max_new_tokens=256))


def test_it_counts_the_new_tokens(backend):
    backend.generate(PROMPTS, WARM, n=2, ignore_eos=True)

    # ignore_eos: every candidate runs to max_new_tokens, as the benchmark needs.
    assert backend.last_tokens_generated == len(PROMPTS) * 2 * WARM.max_new_tokens
    before = backend.tokens_generated
    backend.generate(PROMPTS, WARM)
    assert 0 < backend.last_tokens_generated <= len(PROMPTS) * WARM.max_new_tokens
    assert backend.tokens_generated == before + backend.last_tokens_generated


def test_generate_distinct_gives_distinct_candidates(backend):
    hot = SamplingSettings(temperature=1.5, max_new_tokens=8, seed=1)

    result = generate_distinct(backend, PROMPTS, hot, 4)

    assert result.not_distinct == {}
    for texts in result.candidates:
        assert len({normalise(text) for text in texts}) == 4
        assert all(normalise(text) for text in texts)


def test_generate_distinct_reports_what_greedy_decoding_cannot_vary(backend):
    greedy = SamplingSettings(temperature=0, max_new_tokens=8)

    result = generate_distinct(backend, PROMPTS[:2], greedy, 3)

    # Copies 1 and 2 repeat copy 0 (which may itself be empty, and then is listed too).
    assert set(result.not_distinct) == {0, 1}
    assert all({1, 2} <= set(js) for js in result.not_distinct.values())
    assert result.resampled == 0
    assert all(len(set(texts)) == 1 for texts in result.candidates)


class ScriptedBackend:
    """A backend that answers from a script, to drive the resampling."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []
        self.tokens_generated = 0

    def generate(self, prompts, settings, *, n=1, ignore_eos=False):
        self.calls.append((list(prompts), settings.seed, n))
        return [[self.answers.pop(0) for _ in range(n)] for _ in prompts]


def test_generate_distinct_resamples_empty_and_repeated_candidates_with_new_seeds():
    scripted = ScriptedBackend(["a", "a  ", "", "b",  # first round: two to redo
                                "c", "a",             # second: one still repeats
                                "d"])                 # third: done

    result = generate_distinct(scripted, ["p"], WARM, 4, max_tries=3)

    assert result.candidates == [["a", "c", "d", "b"]]
    assert result.not_distinct == {}
    assert result.resampled == 3
    seeds = [seed for _, seed, _ in scripted.calls]
    assert len(set(seeds)) == 3


def test_generate_distinct_stops_after_max_tries_and_reports():
    scripted = ScriptedBackend(["a", "a", "a", "a"])

    result = generate_distinct(scripted, ["p"], WARM, 2, max_tries=2)

    assert result.candidates == [["a", "a"]]
    assert result.not_distinct == {0: [1]}
    assert len(scripted.calls) == 3
