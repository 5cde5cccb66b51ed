import collections
import random
import string

import pytest

from puzzles import cipher
from puzzles.audit import estimate_real_tokens
from puzzles.base import PROMPT_SUFFIX, NotTeachable, PuzzleFormatError, detect_category

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
        assert estimate_real_tokens(text) < 1500


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


# ---------------------------------------------------------------- step 3: recall the word list, verify it


def _traced(seed, difficulty):
    p = cipher.generate(random.Random(seed), difficulty)
    return p, cipher.trace(p, cipher.solve(p))


def _leaps(p, text):
    return [(s.kind, s.text) for s in cipher.audit(p, text) if not s.derived]


@pytest.mark.parametrize("unseen", [1, 2, 3])
def test_word_recall_audits_leap_free_on_generated_puzzles(unseen):
    for seed in range(120):
        p, text = _traced(seed, {"unseen_letters": unseen})
        steps = cipher.audit(p, text)
        assert [s for s in steps if not s.derived] == [], text
        here = collections.Counter(s.kind for s in steps)
        assert here["recall"] == here["verify"] == here["resolve"] == text.count("-letter words are ") >= 1


def test_verdict_gives_the_first_reason_letter_by_letter():
    table = {"a": "m", "b": "o", "c": "s"}  # a->m, b->o, c->s; d, e unknown
    assert cipher.verdict(table, "abdce", "mouse") == ("fits d->u, e->e", [("d", "u"), ("e", "e")])
    assert cipher.verdict(table, "abdce", "alice")[0] == "a≠m"  # the first known letter that differs
    assert cipher.verdict(table, "abdce", "moose")[0] == "o taken by b"  # d would need o, b has it
    assert cipher.verdict(table, "abddb", "mouso")[0] == "d->u≠s"  # d repeats: u, then s
    assert cipher.verdict(table, "abdec", "mouus")[0] == "u taken by d"  # e would need the u d just took


def _tampered(p, text, find, change):
    """The trace with the first line containing ``find`` changed by ``change``, and that line."""
    lines = text.split("\n")
    i = next(i for i, line in enumerate(lines) if find in line)
    lines[i] = change(lines[i])
    return "\n".join(lines), lines[i]


def test_a_corrupted_verdict_a_dropped_word_and_a_wrong_conclusion_are_leaps():
    p, text = _traced(3, {"unseen_letters": 1})
    assert _leaps(p, text) == []
    partial = next(line for line in text.split("\n") if ": check " in line).split(":")[0]
    fitting = text.split(f"{partial}: the only fitting word is ")[1].split(",")[0]
    n = len(fitting)
    other = next(w for w in cipher.WORDS if len(w) == n and w != fitting)
    # a verdict turned around: a failing word said to fit
    bad, line = _tampered(p, text, ": check ", lambda s: s.replace(f"{other} ", f"{other} fits ", 1))
    assert ("verify", line) in _leaps(p, bad)
    assert any(kind == "resolve" for kind, _ in _leaps(p, bad))  # a conclusion on an unchecked list
    # a word left out of the recited entry
    bad, line = _tampered(p, text, "-letter words are ", lambda s: s.replace(f" {other}", "", 1))
    assert ("recall", line) in _leaps(p, bad)
    # the wrong word concluded
    bad, line = _tampered(p, text, "the only fitting word is", lambda s: s.replace(fitting, other, 1))
    assert ("resolve", line) in _leaps(p, bad)
    # the check line left out: the conclusion is memory again
    lines = text.split("\n")
    bad = "\n".join(line for line in lines if ": check " not in line)
    assert [k for k, _ in _leaps(p, bad)] == ["resolve"]


def test_a_tampered_trace_is_a_leap_in_the_file_audit():
    from puzzles import audit
    from puzzles.traces import completion

    p, text = _traced(3, {"unseen_letters": 1})
    row = {"id": "t", "category": "cipher", "prompt": p.prompt, "answer": p.answer,
           "completion": completion(text, p.answer)}
    assert audit.audit_row(row)["leaps"] == []
    bad, _ = _tampered(p, text, "the only fitting word is", lambda s: s.replace("the only fitting word", "a word"))
    row["completion"] = completion(bad, p.answer)
    assert audit.audit_row(row)["leaps"]


JOINT = (1273, {"unseen_letters": (6, 26), "n_examples": 1})  # two words fit ????e; the sentence shape decides


def test_several_fitting_words_get_a_visible_joint_check():
    p, text = _traced(*JOINT)
    assert "above, alice fit; left open for now." in text
    assert "  above reads under garden: not a sentence shape" in text
    assert "Only alice reads under garden fits, so " in text
    assert _leaps(p, text) == []
    bad, line = _tampered(p, text, ": not a sentence shape", lambda s: s.replace("not a sentence shape", "fits"))
    assert ("verify", line) in _leaps(p, bad)


def test_joint_check_verdicts_name_the_clash():
    p = cipher.parse(_prompt([("ab", "in")], "cde fgh"))
    table = cipher.letter_table(p.examples)
    lines, new = cipher.joint(p, table, {"cde": ["cat", "map"], "fgh": ["the", "key"]})
    assert lines == [
        "  cat the: plain t used twice (e, f)",
        "  cat key: not a sentence shape",
        "  map the: not a sentence shape",
        "  map key: not a sentence shape",
        "0 combinations fit.",
    ] and new is None
    p = cipher.parse(_prompt([("ab", "in")], "cde cfg"))
    lines, _ = cipher.joint(p, table, {"cde": ["cat"], "cfg": ["key"]})
    assert lines[0] == "  cat key: encrypted c mapped twice (c, k)"


def test_too_many_combinations_is_not_teachable_and_the_mix_skips_it(monkeypatch):
    from puzzles import mix

    p = cipher.generate(random.Random(JOINT[0]), JOINT[1])
    monkeypatch.setattr(cipher, "MAX_COMBINATIONS", 1)  # this puzzle needs 2
    with pytest.raises(NotTeachable):
        cipher.trace(p, cipher.solve(p))
    assert mix.make_row(p, ("deduced",))[1] == "not_teachable"


def test_example_words_outside_the_vocabulary_are_recited_as_such():
    key = dict(zip(string.ascii_lowercase, "qwertyuiopasdfghjklzxcvbnm"))
    enc = lambda s: "".join(key.get(c, c) for c in s)
    pairs = [(enc(p), p) for p in ("alice reads the book", "the wise mouse dreams", "zorro sees")]
    p = cipher.parse(_prompt(pairs, enc("king reads")))
    text = cipher.trace(p, cipher.solve(p))
    assert "; from the examples also zorro" not in text  # 4 letters: king's entry has no zorro
    p = cipher.parse(_prompt(pairs, enc("queen reads")))
    text = cipher.trace(p, cipher.solve(p))
    assert ": the 5-letter words are above alice " in text and "; from the examples also zorro" in text
    assert "zorro z taken by " in text and _leaps(p, text) == []


def test_a_query_the_table_covers_needs_no_step_3():
    p, text = _traced(0, {"unseen_letters": 0})
    assert "Step 3" not in text and "Plain letters already used" not in text and _leaps(p, text) == []


def test_drills_teach_the_exact_lists_the_traces_recite():
    import random

    from puzzles.analyze import solve_traced

    drills = {body.split(" are ")[0].split()[1]: body.split(" are ")[1].split(":")[0]
              for _, body, _ in cipher.drill_rows()}
    recited = 0
    for seed in range(40):
        _, row = solve_traced(cipher.generate(random.Random(seed), {"unseen_letters": (1, 3)}))
        for line in row["completion"].split("\n"):
            if "-letter words are " in line:
                n_letters, words = line.split(": the ")[1].split(" words are ")
                assert drills[n_letters] == words.split(";")[0]
                recited += 1
    assert recited >= 40
