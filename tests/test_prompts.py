"""Prompt schema: tasks, paraphrases, SID spans for history, decoder options, clear errors."""
import numpy as np
import pytest

from _tiny import make_world
from neo.lm.prompts import TEMPLATES, Prompt, PromptBuilder, PromptError


@pytest.fixture(scope="module")
def world():
    return make_world("llama")


@pytest.fixture(scope="module")
def builder(world):
    return PromptBuilder(world["tokenizer"], world["vocab"], world["index"], world["catalog"])


def test_history_rendered_as_spans(world, builder):
    v, cat = world["vocab"], world["catalog"]
    p = Prompt(task="recommend", history=["movie3", "book2"], target_types="movie", k=5)
    ids = builder.encode(p)
    span3 = v.span_ids(world["sid_tokens"]["movie"][3].tolist())
    span_b2 = v.span_ids(world["sid_tokens"]["book"][2].tolist())
    s = ids.__repr__()[1:-1]
    assert ", ".join(map(str, span3)) in s and ", ".join(map(str, span_b2)) in s
    assert ids[0] == world["tokenizer"].bos_token_id
    text = builder.text(p)
    # recommendation in the ids format is the sequence shape: instruction, spans back to back, nothing after
    assert text == "Next movies:" + v.span_text(world["sid_tokens"]["movie"][3].tolist()) + \
        v.span_text(world["sid_tokens"]["book"][2].tolist())
    assert ids[-len(span_b2):] == span_b2
    # string rendering and id rendering agree through the tokenizer
    assert world["tokenizer"](text, add_special_tokens=False)["input_ids"] == ids[1:]
    assert builder.encode(p, open_span=True)[-1] == v.open_id
    # the prose formats keep the paraphrase templates, k and the answer cue
    pm = Prompt(task="recommend", history=["movie3", "book2"], target_types="movie", k=5, format="mixed")
    tm = builder.text(pm)
    assert "5 movies" in tm and tm.endswith("\nAnswer:") and v.span_text(world["sid_tokens"]["movie"][3].tolist()) in tm


def test_decoder_options_follow_prompt(builder, world):
    p = Prompt(task="recommend", history=["movie1", 25], target_types=["movie"], k=3)
    o = builder.decoder_options(p)
    assert o["format"] == "ids" and o["allowed_types"] == ["movie"] and o["max_items"] == 3
    assert sorted(o["exclude"].tolist()) == [1, 25]
    o2 = builder.decoder_options(p, format="mixed", allowed_types=["book"])
    assert o2["format"] == "mixed" and o2["allowed_types"] == ["book"]
    assert builder.decoder_options(Prompt(task="describe_user", history=[1]))["format"] == "text"
    assert builder.decoder_options(Prompt(task="explain", history=[1], item=2))["format"] == "mixed"
    assert builder.decoder_options(Prompt(task="recommend", history=[1], exclude_history=False))["exclude"] is None


@pytest.mark.parametrize("task", ["recommend", "search", "describe_user", "explain", "free"])
def test_paraphrases_differ_and_render(builder, task):
    kw = dict(history=["movie0"], query="space robots", item="book1", instruction="Tell me a joke.",
              user={"age": 31, "country": "FR"})
    texts = {builder.text(Prompt(task=task, template=i, **kw)) for i in range(len(TEMPLATES[task]))}
    assert len(texts) == len(TEMPLATES[task])
    for t in texts:
        assert "{" not in t and "age: 31" in t
    seeded = PromptBuilder(builder.tokenizer, builder.vocab, builder.index, builder.catalog, seed=1)
    assert len({seeded.text(Prompt(task=task, **kw)) for _ in range(20)}) == len(TEMPLATES[task])


def test_bad_prompts_name_the_problem(builder):
    with pytest.raises(PromptError, match="unknown item type.*'song'.*known types"):
        builder.encode(Prompt(task="recommend", target_types="song"))
    with pytest.raises(PromptError, match=r"history has item\(s\) not in the catalog: \['nope', 'zzz'\]"):
        builder.encode(Prompt(task="recommend", history=["movie1", "nope", "zzz"]))
    with pytest.raises(PromptError, match="unknown task"):
        builder.encode(Prompt(task="dance"))
    with pytest.raises(PromptError, match="unknown output format"):
        builder.encode(Prompt(task="recommend", format="json"))
    with pytest.raises(PromptError, match="needs a query"):
        builder.encode(Prompt(task="search"))
    with pytest.raises(PromptError, match=r"not in the catalog: \[999\]"):
        builder.encode(Prompt(task="recommend", history=[999]))
