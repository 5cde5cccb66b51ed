"""bench/results: the records parse, README's tables are generated from them and current, and every
fastnemo.plan RATES entry that names a record equals that record's tokens/s."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import results


def test_readme_tables_are_current():
    readme = (Path(results.__file__).parent / "README.md").read_text()
    assert results.render_readme(readme, results.load()) == readme, "run: python bench/results.py readme"


def test_rates_come_from_records():
    from fastnemo.plan import RATES

    records = results.load()
    cited = 0
    for key, (value, how) in RATES.items():
        m = re.search(r"record (\S+), (\d{4}-\d\d-\d\d)", how)
        if not m:
            continue
        rec = results.find(records, m.group(1).rstrip(","))
        if key.endswith("_step_s"):  # a decode step's seconds, to 1 %
            assert value == pytest.approx(rec["decode_step_s"], rel=0.01), (key, value, rec["decode_step_s"])
        else:  # tokens/s, or an engine start's seconds
            field = ("engine_start_s" if key.endswith("_start_s") else "overhead_s"
                     if key.endswith("_overhead_s") else "tok_s")
            assert round(rec[field]) == value, (key, value, rec[field])
        cited += 1
    assert cited >= 4


def test_measured_sft_peaks_come_from_records():
    from fastnemo.plan import MEASURED_SFT_GIB, MEASURED_TRAIN_GIB

    records = results.load()
    for gib, rec_id in MEASURED_SFT_GIB.values():
        assert round(results.find(records, rec_id)["peak_gib"], 2) == gib, rec_id
    assert MEASURED_TRAIN_GIB == MEASURED_SFT_GIB[("routed experts frozen", "none")][0]


def test_a_bad_record_names_its_file_and_line(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"bench": "x"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:1: record lacks"):
        results.load(tmp_path)
    rec = results.record("sft", variant="v", tok_s=1.0)
    results.append(tmp_path / "ok.jsonl", rec)
    assert results.load(tmp_path / "none") == []
