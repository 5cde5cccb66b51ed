import collections
import random
import string

import pytest

from puzzles import cipher
from puzzles.base import PROMPT_SUFFIX, PuzzleFormatError, detect_category

REAL = "cipher"


def _real(rows):
    return [r for r in rows if detect_category(r["prompt"]) == REAL]


def _prompt(pairs, query):
    lines = [cipher.HEADER, *(f"{e} -> {p}" for e, p in pairs), f"Now, decrypt the following text: {query}"]
    return "\n".join(lines)


def test_real_rows_all_solved_exactly(train_dev_rows):
    rows = _real(train_dev_rows)
    assert len(rows) > 500
    wrong, abstained = [], []
    for r in rows:
        sol = cipher.solve(cipher.parse(r["prompt"]))
        if sol is None:
            abstained.append(r["id"])
        elif sol.answer != r["answer"] or sol.status != "deduced":
            wrong.append((r["id"], sol.answer, r["answer"]))
    assert wrong == [] and abstained == []


def test_vocabulary_covers_real_plain_words(train_dev_rows):
    """The generator's closed vocabulary is the real one, and every real phrase has one of the shapes."""
    for r in _real(train_dev_rows):
        p = cipher.parse(r["prompt"])
        for phrase in [plain for _, plain in p.examples] + [r["answer"]]:
            assert cipher._fits_template(phrase.split()), phrase


def test_roundtrip_generate_parse_solve():
    outcome = collections.Counter()
    for seed in range(3000):
        p = cipher.generate(random.Random(seed))
        sol = cipher.solve(cipher.parse(p.prompt + PROMPT_SUFFIX))
        if sol is None:
            outcome["abstained"] += 1
            continue
        assert sol.answer == p.answer, p.prompt  # zero wrong
        outcome[sol.status] += 1
    assert outcome["abstained"] < 30 and outcome["guessed"] == 0


def test_hard_puzzles_many_unseen_letters():
    outcome = collections.Counter()
    for seed in range(300):
        p = cipher.generate(random.Random(seed), {"n_examples": 3, "unseen_letters": (4, 8)})
        assert 4 <= p.features["unseen_letters"] <= 8
        sol = cipher.solve(cipher.parse(p.prompt))
        if sol is not None:
            assert sol.answer == p.answer, p.prompt
        outcome[sol is not None] += 1
    assert outcome[True] > 250


def test_fidelity_with_real_rows(train_dev_rows):
    real = [cipher.parse(r["prompt"]) for r in _real(train_dev_rows)]
    gen = [cipher.generate(random.Random(s)) for s in range(2000)]
    for ps in (real, gen):
        n = len(ps)
        counts = collections.Counter(p.features["n_examples"] for p in ps)
        assert set(counts) == {3, 4, 5} and all(0.25 < c / n < 0.42 for c in counts.values())
        qw = collections.Counter(p.features["query_words"] for p in ps)
        assert 0.2 < qw[3] / n < 0.3 and 0.45 < qw[4] / n < 0.55 and 0.2 < qw[5] / n < 0.3
        unseen = collections.Counter(min(p.features["unseen_letters"], 3) for p in ps)
        assert 0.3 < unseen[0] / n < 0.45 and 0.3 < unseen[1] / n < 0.45 and 0.13 < unseen[2] / n < 0.23
        assert unseen[3] / n < 0.1


def test_difficulty_knobs_accept_parser_features_as_scalars():
    p = cipher.generate(random.Random(5), {"n_examples": 4, "query_words": 5, "unseen_letters": 2})
    assert p.features == {**p.features, "n_examples": 4, "query_words": 5, "unseen_letters": 2}
    p = cipher.generate(random.Random(5), {"templates": [["S", "V", "O"]], "query_words": 3})
    assert all(len(plain.split()) == 3 for _, plain in p.examples)


def test_unknown_letters_resolved_from_the_word_list():
    # the examples never show n or g; "ki??" with n, g unused -> "king" is the only fitting word
    key = dict(zip(string.ascii_lowercase, "qwertyuiopasdfghjklzxcvbnm"))
    enc = lambda s: "".join(key.get(c, c) for c in s)
    pairs = [(enc(p), p) for p in ("alice reads the book", "the wise mouse dreams")]
    sol = cipher.solve(cipher.parse(_prompt(pairs, enc("king reads"))))
    assert sol.answer == "king reads" and sol.status == "deduced"
    text = cipher.trace(cipher.parse(_prompt(pairs, enc("king reads"))), sol)
    assert "ki??: the only fitting word is king, so " in text
    assert text.rstrip().endswith("The decrypted text is: king reads")


def test_abstains_when_word_list_cannot_decide():
    key = dict(zip(string.ascii_lowercase, "qwertyuiopasdfghjklzxcvbnm"))
    enc = lambda s: "".join(key.get(c, c) for c in s)
    pairs = [(enc(p), p) for p in ("alice reads the book",)]
    # "zzzz" is outside the vocabulary and its letters are unseen: nothing fits
    assert cipher.solve(cipher.parse(_prompt(pairs, enc("zzzz reads")))) is None
    # 'c' -> "cat" / "map" / "key" ... several fit and no other word constrains them
    assert cipher.solve(cipher.parse(_prompt(pairs, enc("xyz")))) is None


def test_contradicting_examples_abstain():
    assert cipher.solve(cipher.parse(_prompt([("ab", "cd"), ("aa", "ce")], "ab"))) is None  # a -> c and e
    assert cipher.solve(cipher.parse(_prompt([("ab", "cc")], "ab"))) is None  # not one-to-one


def test_trace_is_mechanical_and_short():
    for seed in range(100):
        p = cipher.generate(random.Random(seed))
        sol = cipher.solve(p)
        if sol is None:
            continue
        text = cipher.trace(p, sol)
        for e_word in p.query.split():
            assert f"\n{e_word}: " in text
        assert text.rstrip().endswith(f"The decrypted text is: {p.answer}")
        assert len(text) < 4500  # well under 1,500 tokens


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        _prompt([("ab cd", "xy")], "ab"),  # word counts differ
        _prompt([("Ab", "xy")], "ab"),  # upper case
        cipher.HEADER + "\nab -> xy\nNow, encrypt the following text: ab",
    ],
)
def test_bad_prompts_raise(prompt):
    with pytest.raises(PuzzleFormatError):
        cipher.parse(prompt)
