"""The bit manipulation generator's rule space as an explicit grammar: a catalog of gates over copies of x.

A *copy* of the input byte x is x rotated left by r (0-7; r = 0 is x itself), shifted left by a (1-7) or
shifted right by b (1-7); bits moved in by a shift are 0 (see ``puzzles.bits_search.base_source``). A rule
is one catalog gate applied at every bit position i to bit i of its copies:

    rule   := gate(copy, ...)         one entry of CATALOG, copies in the entry's order of kinds
    copy   := rot r | shl a | shr b   (two copies of one kind: the smaller amount first)

The catalog lists every (kinds, truth table) the real rows use: on train_dev.csv's 961 bit rows, the gold
answer appended as an example, the simplest rule that fits each row is one of these 16 entries (the
counts are ``weight``, the prior). A truth table is written as its outputs for the keys 0, 1, ..., 2^k - 1,
the key being the copies' bits read left to right (A B C). A table read off the examples fills only the
keys they show; it is *snapped* to the catalog entry of its kinds at Hamming distance 0 on those keys,
which also fills the keys the examples never show.
"""

from __future__ import annotations

import dataclasses
import itertools
from functools import lru_cache

import numpy as np

from puzzles.bits_search import base_name, base_source

Copy = tuple[str, int]  # ("rot", r) | ("shl", a) | ("shr", b)
AMOUNTS = {"rot": range(8), "shl": range(1, 8), "shr": range(1, 8)}
KIND_ORDER = {"rot": 0, "shl": 1, "shr": 2}


@dataclasses.dataclass(frozen=True)
class Gate:
    """One catalog entry: a named truth table over copies of the given kinds."""

    name: str
    kinds: tuple[str, ...]
    table: str  # outputs for keys 0 .. 2^k - 1
    formula: str
    weight: float  # rows of train_dev whose simplest fitting rule is this entry: the prior

    def out(self, key: str) -> str:
        return self.table[int(key, 2)]


CATALOG: tuple[Gate, ...] = (
    Gate("COPY", ("rot",), "01", "A", 54),
    Gate("COPY", ("shl",), "01", "A", 10),
    Gate("COPY", ("shr",), "01", "A", 16),
    Gate("XOR", ("shl", "shr"), "0110", "A XOR B", 228),
    Gate("XOR", ("rot", "shl"), "0110", "A XOR B", 48),
    Gate("XOR", ("rot", "shr"), "0110", "A XOR B", 32),
    Gate("OR", ("rot", "shl"), "0111", "A OR B", 29),
    Gate("OR", ("rot", "shr"), "0111", "A OR B", 43),
    Gate("AND", ("rot", "rot"), "0001", "A AND B", 16),
    Gate("AND", ("rot", "shl"), "0001", "A AND B", 12),
    Gate("AND", ("rot", "shr"), "0001", "A AND B", 14),
    Gate("ANDNOT", ("rot", "shl"), "0010", "A AND NOT B", 50),
    Gate("XNOR", ("rot", "shl"), "1001", "NOT (A XOR B)", 4),
    Gate("XNOR", ("shl", "shl"), "1001", "NOT (A XOR B)", 27),
    Gate("NOTOR", ("shr", "shr"), "1101", "NOT A OR B", 9),
    Gate("MAJ", ("rot", "shl", "shr"), "00010111", "majority of A, B, C", 34),
    Gate("CHOICE", ("rot", "shl", "shr"), "00011101", "if B then C else A", 25),
    Gate("G1", ("rot", "shl", "shr"), "11010110", "C ? NOT (A AND B) : NOT (A XOR B)", 70),
    Gate("G2", ("rot", "shl", "shr"), "11010111", "C OR NOT (A XOR B)", 60),
)


def copy_bits(c: Copy, x: str) -> str:
    """The 8 bits of copy c of x."""
    return "".join("0" if (p := base_source(c, i)) is None else x[p] for i in range(8))


def copy_name(c: Copy) -> str:
    return base_name(c)


def keys_of(copies: list[Copy], x: str) -> list[str]:
    """The table key of each bit position: the copies' bits there, left to right."""
    cb = [copy_bits(c, x) for c in copies]
    return ["".join(b[i] for b in cb) for i in range(8)]


@dataclasses.dataclass(frozen=True)
class Rule:
    gate: Gate
    copies: tuple[Copy, ...]

    def apply(self, x: str) -> str:
        return "".join(self.gate.out(k) for k in keys_of(list(self.copies), x))

    @property
    def prior(self) -> float:
        return self.gate.weight / n_placements(self.gate.kinds)


def placements(kinds: tuple[str, ...]) -> list[tuple[Copy, ...]]:
    """Every choice of amounts for the kinds (same kinds: distinct amounts, smaller first)."""
    out = []
    for amounts in itertools.product(*(AMOUNTS[k] for k in kinds)):
        if all(not (kinds[j] == kinds[j + 1] and amounts[j] >= amounts[j + 1]) for j in range(len(kinds) - 1)):
            out.append(tuple(zip(kinds, amounts)))
    return out


def n_placements(kinds: tuple[str, ...]) -> int:
    return len(placements(kinds))


@lru_cache(maxsize=1)
def all_rules() -> tuple[list[Rule], np.ndarray]:
    """Every rule of the grammar and its output byte for each of the 256 inputs ([R, 256] uint8)."""
    from puzzles.bits_search import BASES, _base_bits

    bb = _base_bits()  # [22, 256, 8]: bit i of each copy of each byte
    index = {b: j for j, b in enumerate(BASES)}
    rules, outs = [], []
    weights = 1 << np.arange(7, -1, -1)
    for g in CATALOG:
        lut = np.array([int(c) for c in g.table], dtype=np.int64)
        for p in placements(g.kinds):
            key = np.zeros((256, 8), dtype=np.int64)
            for c in p:
                key = key * 2 + bb[index[c]]
            rules.append(Rule(g, p))
            outs.append((lut[key] * weights).sum(1))
    return rules, np.array(outs, dtype=np.uint8)


def fitting(examples: list[tuple[str, str]]) -> list[Rule]:
    """The rules that reproduce every example exactly."""
    rules, out = all_rules()
    xi = np.array([int(x, 2) for x, _ in examples])
    yi = np.array([int(y, 2) for _, y in examples], dtype=np.uint8)
    ok = (out[:, xi] == yi[None, :]).all(1)
    return [rules[j] for j in np.flatnonzero(ok)]


def read_table(copies: list[Copy], examples: list[tuple[str, str]]) -> dict[str, str] | None:
    """The key table the examples show for these copies (None when one key shows both 0 and 1)."""
    table: dict[str, str] = {}
    for x, y in examples:
        for key, bit in zip(keys_of(copies, x), y):
            if table.setdefault(key, bit) != bit:
                return None
    return table


def distance(gate: Gate, table: dict[str, str]) -> int:
    """Hamming distance between a gate's table and a read table, over the keys the read table shows."""
    return sum(gate.out(k) != v for k, v in table.items())


def gates_of(kinds: tuple[str, ...]) -> list[Gate]:
    return [g for g in CATALOG if g.kinds == kinds]


def sort_copies(copies: list[Copy]) -> list[Copy]:
    return sorted(copies, key=lambda c: (KIND_ORDER[c[0]], c[1]))
