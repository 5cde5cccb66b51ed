"""cipher: a letter-for-letter substitution over lowercase words; decrypt the query phrase.

Real layout (3 to 5 examples; phrases of 3 to 5 words from a small closed vocabulary in four shapes)::

    In Alice's Wonderland, secret encryption rules are used on text. Here are some examples:
    wkgqa lsrqaq wneeke -> mouse chases mirror
    Now, decrypt the following text: hncreo learpaq qaleap

Inference: the examples give a partial table encrypted -> plain letter (checked to be a function and
injective, else abstain). Query letters the examples never show are resolved against a word list: the plain
words of the examples plus ``WORDS``, the closed vocabulary of these puzzles. A candidate word must have the
query word's length, agree with every known letter, map unknown encrypted letters only to plain letters no
other encrypted letter already takes, and keep the mapping injective across the whole phrase. If exactly one
decryption survives (after the sentence shapes ``TEMPLATES`` break remaining ties), it is "deduced";
otherwise the solver abstains.
"""

from __future__ import annotations

import itertools
import random
import re
import string

from puzzles.base import PROMPT_SUFFIX, Puzzle, PuzzleFormatError, Solution
from puzzles.units import span

CATEGORY = "cipher"
HEADER = "In Alice's Wonderland, secret encryption rules are used on text. Here are some examples:"
_EXAMPLE = re.compile(r"^([a-z]+(?: [a-z]+)*) -> ([a-z]+(?: [a-z]+)*)$")
_QUERY = re.compile(r"^Now, decrypt the following text: ([a-z]+(?: [a-z]+)*)$")

# The generator's vocabulary, by grammatical slot, as the real prompts' plain sides use it.
SUBJECTS = (
    "alice",
    "bird",
    "cat",
    "dragon",
    "hatter",
    "king",
    "knight",
    "mouse",
    "princess",
    "queen",
    "rabbit",
    "student",
    "teacher",
    "turtle",
    "wizard",
)
VERBS = (
    "chases",
    "creates",
    "discovers",
    "draws",
    "dreams",
    "explores",
    "follows",
    "found",
    "imagines",
    "reads",
    "sees",
    "studies",
    "watches",
    "writes",
)
OBJECTS = (
    "book",
    "castle",
    "crystal",
    "door",
    "forest",
    "garden",
    "key",
    "map",
    "message",
    "mirror",
    "potion",
    "puzzle",
    "secret",
    "story",
    "treasure",
)
PREPOSITIONS = ("above", "around", "beyond", "in", "inside", "near", "through", "under")
PLACES = (
    "castle",
    "cave",
    "forest",
    "garden",
    "island",
    "library",
    "mountain",
    "ocean",
    "palace",
    "school",
    "tower",
    "valley",
    "village",
    "wonderland",
)
ADJECTIVES = (
    "ancient",
    "bright",
    "clever",
    "colorful",
    "curious",
    "dark",
    "golden",
    "hidden",
    "magical",
    "mysterious",
    "secret",
    "silver",
    "strange",
    "wise",
)
SLOTS = {
    "S": SUBJECTS,
    "V": VERBS,
    "O": OBJECTS,
    "P": PREPOSITIONS,
    "L": PLACES,
    "A": ADJECTIVES,
    "the": ("the",),
}
# Sentence shapes of the real phrases, about equally frequent: 3, 4, 4 and 5 words.
TEMPLATES = (("S", "V", "O"), ("S", "V", "P", "L"), ("the", "A", "S", "V"), ("S", "V", "the", "A", "O"))
WORDS = tuple(sorted({w for words in SLOTS.values() for w in words}))

DEFAULT_DIFFICULTY = {
    "n_examples": (3, 5),  # inclusive; real rows: 3, 4, 5 about equally often
    "templates": TEMPLATES,  # sentence shapes to draw from (words per phrase: 3 to 5)
    "query_words": (3, 5),  # inclusive; real rows: 4 words in half, 3 or 5 in a quarter each
    "unseen_letters": (0, 26),  # inclusive bounds on distinct query letters the examples never show
}
_MAX_SOLUTIONS = 64


def parse(prompt: str) -> Puzzle:
    text = prompt.removesuffix(PROMPT_SUFFIX).strip()
    lines = text.split("\n")
    if len(lines) < 3 or lines[0] != HEADER:
        raise PuzzleFormatError(f"not a cipher prompt (header or line count): {text[:80]!r}")
    examples = []
    for line in lines[1:-1]:
        m = _EXAMPLE.match(line)
        if not m or len(m.group(1).split()) != len(m.group(2).split()):
            raise PuzzleFormatError(
                f"cipher example line not 'encrypted words -> as many plain words': {line!r}"
            )
        examples.append((m.group(1), m.group(2)))
    q = _QUERY.match(lines[-1])
    if not q:
        raise PuzzleFormatError(f"cipher query line not recognised: {lines[-1]!r}")
    query = q.group(1)
    seen = {c for enc, _ in examples for c in enc if c != " "}
    features = {
        "n_examples": len(examples),
        "query_words": len(query.split()),
        "example_words": [len(enc.split()) for enc, _ in examples],
        "unseen_letters": len({c for c in query if c != " " and c not in seen}),
    }
    return Puzzle(id="", category=CATEGORY, prompt=text, examples=examples, query=query, features=features)


def _phrase(rng: random.Random, templates) -> str:
    return " ".join(rng.choice(SLOTS[slot]) for slot in rng.choice(templates))


def generate(rng: random.Random, difficulty: dict | None = None) -> Puzzle:
    """Knobs (``DEFAULT_DIFFICULTY``; an int means exactly that value): ``n_examples`` (lo, hi),
    ``templates`` (sentence shapes, so words per phrase), ``query_words`` (lo, hi) words in the query, and
    ``unseen_letters`` (lo, hi): how many distinct query letters the examples leave unshown (redrawn until
    it holds; real rows: 0 in 38 %, 1 in 37 %, 2 in 18 %, 3 or more in 6 %)."""
    d = {**DEFAULT_DIFFICULTY, **(difficulty or {})}
    lo, hi = span(d["unseen_letters"])
    qlo, qhi = span(d["query_words"])
    query_templates = [t for t in d["templates"] if qlo <= len(t) <= qhi]
    if not query_templates:
        raise ValueError(f"no template among {d['templates']} has {d['query_words']} words")
    for _ in range(10_000):
        plains = [_phrase(rng, d["templates"]) for _ in range(rng.randint(*span(d["n_examples"])))]
        plains.append(_phrase(rng, query_templates))
        shown = set("".join(plains[:-1]))
        if lo <= len(set(plains[-1].replace(" ", "")) - shown) <= hi:
            break
    else:
        raise ValueError(f"no puzzle with unseen_letters in {d['unseen_letters']} after 10000 draws")
    shuffled = list(string.ascii_lowercase)
    rng.shuffle(shuffled)
    key = dict(zip(string.ascii_lowercase, shuffled))
    enc = ["".join(key.get(c, c) for c in p) for p in plains]
    lines = [
        HEADER,
        *(f"{e} -> {p}" for e, p in zip(enc[:-1], plains[:-1])),
        f"Now, decrypt the following text: {enc[-1]}",
    ]
    puzzle = parse("\n".join(lines))
    puzzle.id = f"gen-cipher-{rng.getrandbits(32):08x}"
    puzzle.answer = plains[-1]
    return puzzle


def letter_table(examples) -> dict[str, str] | None:
    """encrypted -> plain from the examples; None when they contradict a one-to-one substitution."""
    table: dict[str, str] = {}
    for enc, plain in examples:
        if len(enc) != len(plain):
            return None
        for e, p in zip(enc, plain):
            if (e == " ") != (p == " ") or table.setdefault(e, p) != p:
                return None
    table.pop(" ", None)
    if len(set(table.values())) != len(table):
        return None
    return table


def _extend(table: dict[str, str], enc: str, word: str) -> dict[str, str] | None:
    """``table`` plus the letters ``enc`` -> ``word`` needs, or None if that breaks the substitution."""
    new = dict(table)
    used = set(table.values())
    for e, p in zip(enc, word):
        if e in new:
            if new[e] != p:
                return None
        elif p in used:
            return None
        else:
            new[e] = p
            used.add(p)
    return new


def candidates(table: dict[str, str], enc: str, lexicon) -> list[str]:
    """Words of ``lexicon`` that ``enc`` can decrypt to under ``table`` extended one-to-one."""
    return [w for w in lexicon if len(w) == len(enc) and _extend(table, enc, w) is not None]


def _fits_template(words: list[str]) -> bool:
    return any(len(t) == len(words) and all(w in SLOTS[s] for s, w in zip(t, words)) for t in TEMPLATES)


def solve(puzzle: Puzzle) -> Solution | None:
    table = letter_table(puzzle.examples)
    if table is None:
        return None
    lexicon = sorted({w for _, plain in puzzle.examples for w in plain.split()} | set(WORDS))
    enc_words = puzzle.query.split()
    per_word = [
        candidates(table, e, lexicon) if any(c not in table for c in e) else ["".join(table[c] for c in e)]
        for e in enc_words
    ]
    if not all(per_word):
        return None  # a word outside the vocabulary with letters never shown: cannot decide
    # joint search: the unknown letters must map consistently and one-to-one across the whole phrase
    solutions = []
    for combo in itertools.product(*per_word):
        t = table
        for e, w in zip(enc_words, combo):
            t = _extend(t, e, w)
            if t is None:
                break
        if t is not None:
            solutions.append(list(combo))
            if len(solutions) > _MAX_SOLUTIONS:
                return None
    rule = "substitution"
    if len(solutions) > 1:
        shaped = [s for s in solutions if _fits_template(s)]
        if len(shaped) != 1:
            return None
        solutions, rule = shaped, "substitution+sentence_shape"
    if len(solutions) != 1:
        return None
    answer = " ".join(solutions[0])
    return Solution(
        answer=answer, rule=rule, steps={"table": table, "candidates": per_word, "words": solutions[0]}
    )


def trace(puzzle: Puzzle, solution: Solution) -> str:
    table: dict[str, str] = {}
    out = [
        (
            "Each example is a letter-for-letter substitution: an encrypted letter always stands for the same "
            "plain letter, and two different encrypted letters never stand for the same plain letter."
        ),
        "Step 1: build the letter table (encrypted -> plain) from the examples, word by word.",
    ]
    for enc, plain in puzzle.examples:
        for e_word, p_word in zip(enc.split(), plain.split()):
            new = []
            for e, p in zip(e_word, p_word):
                if e not in table:
                    table[e] = p
                    new.append(f"{e}->{p}")
            out.append(f"{e_word} = {p_word}: " + (", ".join(new) if new else "nothing new"))
    out.append("Table: " + ", ".join(f"{e}->{table[e]}" for e in sorted(table)))
    out += ["", "Step 2: decode the query letter by letter (? = letter not in the table)."]
    unknown = []  # (encrypted word, partial decoding, plain word, candidate words)
    for e_word, word, cands in zip(
        puzzle.query.split(), solution.answer.split(), solution.steps["candidates"]
    ):
        letters = " ".join(f"{e}->{table.get(e, '?')}" for e in e_word)
        partial = "".join(table.get(e, "?") for e in e_word)
        out.append(f"{e_word}: {letters} = {partial}")
        if "?" in partial:
            unknown.append((e_word, partial, word, cands))
    if unknown:
        out += [
            "",
            (
                "Step 3: resolve the unknown letters with the word list of these puzzles. A candidate must match "
                "the known letters, and an unknown letter can only be a plain letter the table does not use yet."
            ),
            "Plain letters already used: " + ", ".join(sorted(table.values())),
        ]
        for e_word, partial, word, cands in unknown:
            new = ", ".join(f"{e}->{p}" for e, p in dict(zip(e_word, word)).items() if e not in table)
            if len(cands) == 1:
                out.append(f"{partial}: the only fitting word is {word}, so {new}.")
            else:
                out.append(
                    f"{partial}: fitting words {', '.join(cands)}; only {word} agrees with the other query "
                    f"words and the sentence shape, so {new}."
                )
            for e, p in zip(e_word, word):
                table.setdefault(e, p)
    out += ["", f"The decrypted text is: {solution.answer}"]
    return "\n".join(out)


def audit(puzzle: Puzzle, reasoning: str) -> list:
    """Re-build the letter table from the examples and re-check every table line and every decoded letter
    (a letter used before the table holds it is a leap)."""
    from puzzles.base import AuditStep

    pairs = [(e, p) for enc, plain in puzzle.examples for e, p in zip(enc.split(), plain.split())]
    query = puzzle.query.split()
    table: dict[str, str] = {}
    steps, decoded = [], []
    for i, line in enumerate(reasoning.split("\n")):
        if m := re.match(r"^([a-z]+) = ([a-z]+): (.*)$", line):
            e_word, p_word, rest = m.groups()
            new = [f"{e}->{p}" for e, p in dict(zip(e_word, p_word)).items() if e not in table]
            ok = (e_word, p_word) in pairs and rest == (", ".join(new) if new else "nothing new")
            table.update({e: p for e, p in zip(e_word, p_word) if e not in table})
            steps.append(AuditStep(i, "table_build", ok, line))
        elif line.startswith("Table: "):
            ok = line == "Table: " + ", ".join(f"{e}->{table[e]}" for e in sorted(table))
            steps.append(AuditStep(i, "table", ok, line))
        elif m := re.match(r"^([a-z]+): ((?:[a-z]->[a-z?] ?)+) = ([a-z?]+)$", line):
            e_word, letters, partial = m.groups()
            ok = (e_word in query and letters.strip() == " ".join(f"{e}->{table.get(e, '?')}" for e in e_word)
                  and partial == "".join(table.get(e, "?") for e in e_word))
            decoded.append(partial)
            steps.append(AuditStep(i, "table_lookup", ok, line))
        elif m := re.match(r"^([a-z?]+): (?:the only fitting word is|fitting words) .*, so (.*)\.$", line):
            steps.append(AuditStep(i, "recall", False, line))  # the word list is memory, not the prompt
            for pair in m.group(2).split(", "):
                if "->" in pair:
                    table.setdefault(*pair.split("->"))
        elif line.startswith(("Each example is a letter-for-letter", "Step 1: build the letter table",
                                  "Step 2: decode the query")):
            steps.append(AuditStep(i, "rule", True, line))  # the rule every table line below re-checks
        elif line.startswith("The decrypted text is: "):
            ans = line.split(": ", 1)[1]
            words = ans.split()
            ok = len(words) == len(decoded) and all(
                len(w) == len(d) and all(c in ("?", x) for c, x in zip(d, w)) for w, d in zip(words, decoded))
            steps.append(AuditStep(i, "answer", ok, line))
    return steps
