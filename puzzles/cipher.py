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

The trace never searches out of sight (the catalog way of ``puzzles.cryptarithm``): step 1 builds the table,
step 2 decodes the query with '?' for unknown letters, and step 3 (``resolve_lines``) takes each word with a
'?', RECITES the vocabulary entry of its length (``WORDS`` of that length, then example words outside it,
said as such) and gives every entry word its verdict letter by letter (``verdict``: the first reason it
fails, or the new letters it fits with); the only fitting word fixes its letters. Words that fit several
ways are checked again once other words fix letters, then jointly (every combination's verdict over the
whole phrase, at most ``MAX_COMBINATIONS``; else ``puzzles.base.NotTeachable``, which builders count
and skip). ``audit`` re-derives every such line from the audited table and ``WORDS``.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import string

from puzzles.base import PROMPT_SUFFIX, NotTeachable, Puzzle, PuzzleFormatError, Solution
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


# ---------------------------------------------------------------- the trace: recall the word list, verify it

MAX_COMBINATIONS = 6  # joint-check lines a trace may write; a puzzle needing more is not trace-teachable
RULE = (
    "Each example is a letter-for-letter substitution: an encrypted letter always stands for the same "
    "plain letter, and two different encrypted letters never stand for the same plain letter."
)
STEP3 = (
    "Step 3: for each word with a '?', recall the words of its length and check each one letter by letter: "
    "x≠y (the word has x, the table y), x taken by e (encrypted e already stands for x), e->x≠y (a repeated "
    "encrypted letter would need two letters). The only word that fits fixes its new letters."
)
JOINT = (
    "Joint check: the words left open, in every combination, over the whole phrase: an encrypted letter "
    "gets one plain letter, a plain letter one encrypted letter, and the phrase must have a sentence shape."
)


def _decode(enc: str, table: dict[str, str]) -> str:
    return "".join(table.get(e, "?") for e in enc)


def _pairs(new) -> str:
    return ", ".join(f"{e}->{p}" for e, p in new)


def entry(puzzle: Puzzle, n: int) -> tuple[list[str], list[str]]:
    """The word list recited for an n-letter word: ``WORDS`` of that length (the catalog a model
    memorises), then the examples' plain words of that length that ``WORDS`` lacks (read off the prompt)."""
    extra = {w for _, plain in puzzle.examples for w in plain.split() if len(w) == n and w not in WORDS}
    return [w for w in WORDS if len(w) == n], sorted(extra)


def verdict(table: dict[str, str], enc: str, word: str) -> tuple[str, list[tuple[str, str]] | None]:
    """(verdict, new letters) of reading ``enc`` as ``word`` letter by letter under ``table``: the first
    reason it fails (new letters None), or "fits" and the encrypted -> plain letters it adds."""
    owner = {p: e for e, p in table.items()}
    new: dict[str, str] = {}
    for e, p in zip(enc, word, strict=True):
        if e in table:
            if table[e] != p:
                return f"{p}≠{table[e]}", None
        elif e in new:
            if new[e] != p:
                return f"{e}->{new[e]}≠{p}", None
        elif p in owner:
            return f"{p} taken by {owner[p]}", None
        else:
            new[e], owner[p] = p, e
    return f"fits {_pairs(new.items())}", list(new.items())


def block(puzzle: Puzzle, table: dict[str, str], enc: str) -> tuple[list[str], list[tuple[str, list]]]:
    """(recall, check and conclusion lines, fitting (word, new letters)) of one word with unknown letters."""
    partial = _decode(enc, table)
    vocab, extra = entry(puzzle, len(enc))
    recall = f"{enc} = {partial}: the {len(enc)}-letter words are {' '.join(vocab) or 'none'}"
    if extra:
        recall += f"; from the examples also {' '.join(extra)}"
    checks, fits = [], []
    for w in vocab + extra:
        text, new = verdict(table, enc, w)
        checks.append(f"{w} {text}")
        if new is not None:
            fits.append((w, new))
    if len(fits) == 1:
        end = f"{partial}: the only fitting word is {fits[0][0]}, so {_pairs(fits[0][1])}."
    elif fits:
        end = f"{partial}: {', '.join(w for w, _ in fits)} fit; left open for now."
    else:
        end = f"{partial}: no word fits."
    return [recall, f"{partial}: check " + "; ".join(checks), end], fits


def joint(puzzle: Puzzle, table: dict[str, str], open_: dict[str, list[str]]) -> tuple[list[str], list | None]:
    """(combination lines and conclusion, new letters of the one combination that fits, else None) of the
    words still open: every combination of their fitting words, judged over the whole phrase."""
    lines, fits = [], []
    for combo in itertools.product(*open_.values()):
        chosen = dict(zip(open_, combo))
        words = [chosen.get(e) or _decode(e, table) for e in puzzle.query.split()]
        why, new = _combo_verdict(table, chosen, words)
        lines.append(f"  {' '.join(words)}: {why}")
        if new is not None:
            fits.append((words, new))
    if len(fits) != 1:
        return [*lines, f"{len(fits)} combinations fit."], None
    words, new = fits[0]
    return [*lines, f"Only {' '.join(words)} fits, so {_pairs(new)}."], new


def _combo_verdict(table: dict[str, str], chosen: dict[str, str], words: list[str]) -> tuple[str, list | None]:
    merged: dict[str, str] = {}
    owner: dict[str, str] = {}
    for enc, w in chosen.items():
        for e, p in verdict(table, enc, w)[1]:
            if merged.get(e, p) != p:
                return f"encrypted {e} mapped twice ({merged[e]}, {p})", None
            if owner.get(p, e) != e:
                return f"plain {p} used twice ({owner[p]}, {e})", None
            merged[e], owner[p] = p, e
    if not _fits_template(words):
        return "not a sentence shape", None
    return "fits", list(merged.items())


def resolve_lines(puzzle: Puzzle, table: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Step 3's lines after its header and the table they end with. Words are checked in query order;
    a word that fits one way fixes its letters, one that fits several ways is left open and checked again
    after a pass fixes new letters; words still open after a pass that fixes nothing get the joint check
    (raises ``NotTeachable`` when that takes more than ``MAX_COMBINATIONS`` lines or nothing decides)."""
    table = dict(table)
    lines: list[str] = []
    todo = list(dict.fromkeys(e for e in puzzle.query.split() if "?" in _decode(e, table)))
    open_: dict[str, list[str]] = {}
    progress = True
    while todo and progress:
        progress, open_ = False, {}
        for enc in todo:
            if "?" not in _decode(enc, table):
                lines.append(f"{enc} = {_decode(enc, table)} now, with the letters found above")
                continue
            text, fits = block(puzzle, table, enc)
            lines += text
            if not fits:
                raise NotTeachable(f"no word of the list fits {enc}")
            if len(fits) == 1:
                table.update(fits[0][1])
                progress = True
            else:
                open_[enc] = [w for w, _ in fits]
        todo = list(open_)
    if open_:
        n = math.prod(len(ws) for ws in open_.values())
        if n > MAX_COMBINATIONS:
            raise NotTeachable(f"{n} combinations of the open words: more than {MAX_COMBINATIONS}")
        text, new = joint(puzzle, table, open_)
        if new is None:
            raise NotTeachable("the joint check leaves no single combination")
        lines += [JOINT, *text]
        table.update(new)
    return lines, table


def trace(puzzle: Puzzle, solution: Solution) -> str:
    """Steps 1-2 build the table and decode the query; step 3 resolves each unknown word by reciting the
    vocabulary entry of its length and giving every word a letter-by-letter verdict (``resolve_lines``).
    Raises ``puzzles.base.NotTeachable`` where step 3 cannot decide visibly or reaches another answer
    than the solver (builders skip and count such puzzles)."""
    table: dict[str, str] = {}
    out = [RULE, "Step 1: build the letter table (encrypted -> plain) from the examples, word by word."]
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
    for e_word in puzzle.query.split():
        letters = " ".join(f"{e}->{table.get(e, '?')}" for e in e_word)
        out.append(f"{e_word}: {letters} = {_decode(e_word, table)}")
    if any("?" in _decode(e, table) for e in puzzle.query.split()):
        lines, resolved = resolve_lines(puzzle, table)
        out += ["", STEP3, "Plain letters already used: " + ", ".join(sorted(table.values())), *lines]
        table = resolved
    answer = " ".join(_decode(e, table) for e in puzzle.query.split())
    if answer != solution.answer:
        raise NotTeachable(f"the trace reaches {answer!r}, the solver {solution.answer!r}")
    out += ["", f"The decrypted text is: {answer}"]
    return "\n".join(out)


_RECALL = re.compile(r"^([a-z]+) = ([a-z?]+): the \d+-letter words are ")
_NOW = re.compile(r"^([a-z]+) = ([a-z]+) now, with the letters found above$")
_CHECK = re.compile(r"^[a-z?]+: check ")
_END = re.compile(r"^[a-z?]+: (?:the only fitting word is .*|.* fit; left open for now\.|no word fits\.)$")
_JOINT_END = re.compile(r"^(?:Only .* fits, so .*\.|\d+ combinations fit\.)$")


def audit(puzzle: Puzzle, reasoning: str) -> list:
    """Re-build the letter table from the examples and re-check every table line and decoded letter (a
    letter used before the table holds it is a leap); replay step 3 from the table the audited lines give
    and from ``WORDS``: a recall line must recite exactly the entry (``block``), a check line give every
    word its true first reason, a conclusion name exactly the fitting words and follow its own re-derived
    recall and check lines, and a joint check list every combination with its true verdict. Later lines
    are judged on the re-derived letters, not the stated ones."""
    from puzzles.base import AuditStep

    pairs = [(e, p) for enc, plain in puzzle.examples for e, p in zip(enc.split(), plain.split())]
    query = puzzle.query.split()
    table: dict[str, str] = {}
    steps = []
    cur = None  # the open word's block: its expected lines, fitting words and whether its lines re-derived
    open_: dict[str, list[str]] = {}  # words left open (several fit), their fitting words
    want: list[str] | None = None  # the joint check's expected lines, once its header is read
    k, joint_ok, joint_new = 0, False, None
    for i, line in enumerate(reasoning.split("\n")):
        if m := _RECALL.match(line):
            enc = m.group(1)
            ok = enc in query and "?" in _decode(enc, table)
            text, fits = block(puzzle, table, enc) if ok else (["", "", ""], [])
            cur = {"enc": enc, "lines": text, "fits": fits, "recalled": ok and line == text[0], "checked": False}
            steps.append(AuditStep(i, "recall", cur["recalled"], line))
        elif _CHECK.match(line):
            ok = cur is not None and line == cur["lines"][1]
            if cur is not None:
                cur["checked"] = ok
            steps.append(AuditStep(i, "verify", ok, line))
        elif _END.match(line):  # derived only after its own re-derived recall and check lines
            ok = cur is not None and cur["recalled"] and cur["checked"] and line == cur["lines"][2]
            if cur is not None and len(cur["fits"]) == 1:
                table.update(cur["fits"][0][1])
                open_.pop(cur["enc"], None)
            elif cur is not None and cur["fits"]:
                open_[cur["enc"]] = [w for w, _ in cur["fits"]]
            cur = None
            steps.append(AuditStep(i, "resolve", ok, line))
        elif m := _NOW.match(line):
            enc, word = m.groups()
            steps.append(AuditStep(i, "table_lookup", enc in query and _decode(enc, table) == word, line))
        elif line == JOINT:
            n = math.prod(len(ws) for ws in open_.values()) if open_ else 0
            want, joint_new = joint(puzzle, table, open_) if 0 < n <= MAX_COMBINATIONS else ([], None)
            k, joint_ok = 0, bool(want)
            steps.append(AuditStep(i, "rule", True, line))
        elif want is not None and line.startswith("  "):
            ok = k < len(want) - 1 and line == want[k]
            joint_ok, k = joint_ok and ok, k + 1
            steps.append(AuditStep(i, "verify", ok, line))
        elif want is not None and _JOINT_END.match(line):
            ok = joint_ok and k == len(want) - 1 and line == want[-1]
            if joint_new is not None:
                table.update(joint_new)
                open_ = {}
            want = None
            steps.append(AuditStep(i, "resolve", ok, line))
        elif m := re.match(r"^([a-z]+) = ([a-z]+): (.*)$", line):
            e_word, p_word, rest = m.groups()
            new = [f"{e}->{p}" for e, p in dict(zip(e_word, p_word)).items() if e not in table]
            ok = (e_word, p_word) in pairs and rest == (", ".join(new) if new else "nothing new")
            table.update({e: p for e, p in zip(e_word, p_word) if e not in table})
            steps.append(AuditStep(i, "table_build", ok, line))
        elif line.startswith("Table: "):
            ok = line == "Table: " + ", ".join(f"{e}->{table[e]}" for e in sorted(table))
            steps.append(AuditStep(i, "table", ok, line))
        elif line.startswith("Plain letters already used: "):
            ok = line == "Plain letters already used: " + ", ".join(sorted(table.values()))
            steps.append(AuditStep(i, "table", ok, line))
        elif m := re.match(r"^([a-z]+): ((?:[a-z]->[a-z?] ?)+) = ([a-z?]+)$", line):
            e_word, letters, partial = m.groups()
            ok = (e_word in query and letters.strip() == " ".join(f"{e}->{table.get(e, '?')}" for e in e_word)
                  and partial == _decode(e_word, table))
            steps.append(AuditStep(i, "table_lookup", ok, line))
        elif line in (RULE, STEP3) or line.startswith(("Step 1: build the letter table",
                                                         "Step 2: decode the query")):
            steps.append(AuditStep(i, "rule", True, line))  # the rule every table line below re-checks
        elif line.startswith("The decrypted text is: "):
            decoded = " ".join(_decode(e, table) for e in query)
            steps.append(AuditStep(i, "answer", "?" not in decoded and line.split(": ", 1)[1] == decoded, line))
    return steps


# ---------------------------------------------------------------- drills: teach the word list


def drill_rows() -> list[tuple[str, str, str]]:
    """(prompt, completion reasoning, answer: the word count) of one recall drill per word length: the WORDS entry the trace recites
    ("the 5-letter words are ..."), so the mix teaches the list the audit checks recitations against."""
    out = []
    for n in sorted({len(w) for w in WORDS}):
        words = sorted(w for w in WORDS if len(w) == n)
        prompt = ("In Alice's Wonderland, secret encryption rules are used on text. "
                  f"Recall the word list of these puzzles for words of {n} letters.")
        out.append((prompt, f"The {n}-letter words are {' '.join(words)}: {len(words)} word(s).", str(len(words))))
    return out
