"""fastnemo.card: the cap a bigger test card plays under."""

from fastnemo import card


def test_cap_gib_reads_the_variable(monkeypatch):
    monkeypatch.delenv(card.CAP_ENV, raising=False)
    assert card.cap_gib() is None
    monkeypatch.setenv(card.CAP_ENV, "79.2")
    assert card.cap_gib() == 79.2


def test_cap_memory_is_a_no_op_without_a_gpu(monkeypatch):
    monkeypatch.setenv(card.CAP_ENV, "79.2")
    card.cap_memory()  # CPU: nothing to cap, and no error
