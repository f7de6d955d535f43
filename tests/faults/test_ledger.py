"""The fault tests' ledger counts what it claims to count (so a fault test can fail)."""

from __future__ import annotations

from tests.faults.load import Ack, Arrival, Connection, Device, Ledger


def _device(user: str, conversation: str = "c", home: str = "a") -> Device:
    return Device(user, "d", conversation, home)


def _receive(device: Device, *seqs: int, origin: str = "") -> None:
    for seq in seqs:
        device.arrivals.append(Arrival(seq, f"id{seq}", origin or f"s/cm{seq}", float(seq)))
        device.by_seq.setdefault(seq, f"id{seq}")


def test_a_clean_run_has_nothing_to_report() -> None:
    sender, reader = _device("s"), _device("r")
    for seq in (1, 2, 3):
        sender.acks[f"cm{seq}"] = Ack(f"id{seq}", seq, 0.0, 0.1, False)
    _receive(sender, 1, 2, 3)
    _receive(reader, 1, 2, 3)
    ledger = Ledger([sender, reader])
    assert ledger.missing() == ledger.raw_duplicates() == 0
    assert ledger.duplicates_after_dedupe() == ledger.out_of_order() == 0
    assert ledger.messages() == 3


def test_missing_duplicates_and_disorder_are_counted() -> None:
    sender, reader = _device("s"), _device("r")
    for seq in (1, 2, 3):
        sender.acks[f"cm{seq}"] = Ack(f"id{seq}", seq, 0.0, 0.1, False)
    _receive(sender, 1, 2, 3)
    _receive(reader, 2, 1, 2)  # 3 never arrives, 1 after 2, 2 twice
    ledger = Ledger([sender, reader])
    assert ledger.missing() == 1
    assert ledger.out_of_order() == 1
    assert ledger.raw_duplicates() == 1
    assert ledger.duplicates_after_dedupe() == 0  # a re-sent id is not a second message


def test_a_message_stored_twice_is_a_duplicate_after_dedupe() -> None:
    sender, reader = _device("s"), _device("r")
    sender.acks["cm1"] = Ack("id1", 1, 0.0, 0.1, False)
    _receive(reader, 1, origin="s/cm1")
    reader.arrivals.append(Arrival(2, "id2", "s/cm1", 2.0))  # the same client_message_id, a new id
    assert Ledger([sender, reader]).duplicates_after_dedupe() == 1


def test_disconnects_count_server_closes_on_that_node_only() -> None:
    device = _device("r")
    device.connections += [
        Connection("a", 0.0, joined_at=0.1, closed_at=1.0, close_code=1012),
        Connection("b", 1.0, joined_at=1.1, closed_at=2.0, ended_by_client=True),
        Connection("a", 2.0, joined_at=2.1),
    ]
    ledger = Ledger([device])
    assert ledger.disconnects("a") == 1
    assert ledger.disconnects("b") == 0
    assert ledger.disconnects("a", after=1.5) == 0
