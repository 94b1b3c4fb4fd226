"""Rendering a prompt from the template: the text and the character span of every part."""
from __future__ import annotations

from workflow_scripts.prompts import text as rd

TEMPLATE = {"prefix": "Classify.\n", "input": "Review: {text}\nSentiment:", "output": " {label}", "separator": "\n\n"}


def test_render_spans():
    demos = [({"text": "a good film"}, "positive"), ({"text": "bad"}, "negative"), ({"text": "fine"}, "positive")]
    r = rd.render(TEMPLATE, demos, {"text": "the query"})
    expected = (
        "Classify.\n"
        "Review: a good film\nSentiment: positive\n\n"
        "Review: bad\nSentiment: negative\n\n"
        "Review: fine\nSentiment: positive\n\n"
        "Review: the query\nSentiment:"
    )
    assert r.text == expected
    assert len(r.x_chars) == len(r.y_chars) == 3
    for (xs, xe), (ys, ye), (fields, word) in zip(r.x_chars, r.y_chars, demos):
        assert r.text[xs:xe] == f"Review: {fields['text']}\nSentiment:"
        assert r.text[ys:ye] == word
        assert r.text[xe:ys] == " "
    assert r.text[r.query_char:] == "Review: the query\nSentiment:"
    assert r.x_chars[0][0] == len("Classify.\n")


def test_render_pairs_and_label_suffix():
    template = {"prefix": "", "input": "{text} Question: {text_b} Answer:", "output": " {label}.", "separator": "\n"}
    demos = [({"text": "It rains.", "text_b": "Wet?"}, "yes"), ({"text": "Sun.", "text_b": "Snow?"}, "no")]
    r = rd.render(template, demos, {"text": "Cold.", "text_b": "Ice?"})
    assert r.text == (
        "It rains. Question: Wet? Answer: yes.\n"
        "Sun. Question: Snow? Answer: no.\n"
        "Cold. Question: Ice? Answer:"
    )
    assert [r.text[s:e] for s, e in r.y_chars] == ["yes", "no"]
    assert [r.text[s:e] for s, e in r.x_chars] == ["It rains. Question: Wet? Answer:", "Sun. Question: Snow? Answer:"]
    assert r.x_chars[0][0] == 0
    assert r.text[r.query_char:].startswith("Cold.")


def test_render_text_with_braces_is_not_reformatted():
    r = rd.render(TEMPLATE, [({"text": "a {weird} film"}, "positive")], {"text": "{x}"})
    assert r.text[slice(*r.x_chars[0])] == "Review: a {weird} film\nSentiment:"
    assert r.text[r.query_char:] == "Review: {x}\nSentiment:"


def test_render_zero_demos():
    r = rd.render(TEMPLATE, [], {"text": "q"})
    assert r.text == "Classify.\nReview: q\nSentiment:"
    assert r.x_chars == [] and r.y_chars == [] and r.query_char == len("Classify.\n")
