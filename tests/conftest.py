"""Shared fixtures. Real competition puzzles live in ../shared/data beside the repo (absent in a user's
fresh clone): tests that need them skip cleanly."""

from __future__ import annotations

import collections
import csv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TRAIN_DEV = SHARED_DATA / "train_dev.csv"


@pytest.fixture(scope="session")
def train_dev_path() -> Path:
    if not TRAIN_DEV.exists():
        pytest.skip(f"{TRAIN_DEV} is absent (real puzzles are only in the developers' shared folder)")
    return TRAIN_DEV


@pytest.fixture(scope="session")
def train_dev_rows(train_dev_path) -> list[dict]:
    with open(train_dev_path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def chat_server():
    """A real OpenAI-style endpoint on 127.0.0.1 (stdlib http.server in a thread) for the teacher tests: set
    ``holder["fake"]`` to an object whose ``reply(body) -> (status, payload)`` answers each
    /v1/chat/completions request; ``holder["url"]`` is the base URL."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    holder = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            code, payload = holder["fake"].reply(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    holder["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield holder
    httpd.shutdown()
    httpd.server_close()


# ------------------------------------------------------------------------- fault and fuzz counts
# Suites that try many faults or inputs (the fuzz suite, the kill-point suite) tally their outcomes here and
# the terminal summary prints one line per suite, so a CI log shows what was tried and what came of it:
#     fault_counts["fuzz csv"]["inputs"] += 1; fault_counts["fuzz csv"]["clean errors"] += 1
# Outcome names are free text; "tracebacks" and "hangs" are printed for every suite (0 when never counted).
FAULT_COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="session")
def fault_counts() -> dict[str, collections.Counter]:
    """suite -> Counter of outcomes; printed by ``pytest_terminal_summary`` at the end of the session."""
    return FAULT_COUNTS


def pytest_terminal_summary(terminalreporter):
    if not FAULT_COUNTS:
        return
    terminalreporter.section("fault and fuzz counts")
    for suite, counts in sorted(FAULT_COUNTS.items()):
        shown = {**counts, "tracebacks": counts["tracebacks"], "hangs": counts["hangs"]}
        terminalreporter.write_line(f"{suite}: " + ", ".join(f"{k} {v}" for k, v in shown.items()))
