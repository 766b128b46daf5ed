"""The SQLite store: one transaction per borrow/release, idempotency, concurrency,
cooldown that survives a restart, reconcile against a cloud view, schema versioning."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from ipam_daemon.store import (
    MIGRATIONS, AllocationKey, EniRecord, PodInfo, Store, StoreError,
)


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def record(eni_id="eni-1", index=0, primary=True):
    return EniRecord(eni_id, "02:00:00:00:00:01", "subnet-1", "10.0.0.0/24", index,
                     f"10.0.{index}.4", primary, 0.0)


def ips(n, base=10):
    return [f"10.0.0.{base + i}" for i in range(n)]


def key(i, network="net"):
    return AllocationKey(network, f"c{i}", "eth0")


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "ipam.db"


def test_wal_mode_and_schema_version(db_path):
    store = Store(db_path)
    assert store.schema_version == len(MIGRATIONS)
    store.close()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer than this agent"):
        Store(db_path)


def test_64_parallel_borrows_get_64_distinct_ips(db_path):
    store = Store(db_path)
    store.add_eni(record(), ips(70))
    results, errors = [None] * 64, []
    start = threading.Barrier(64)

    def borrow(i):
        try:
            start.wait()
            results[i] = store.borrow(key(i), PodInfo("ns", f"pod{i}"))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=borrow, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    got = [r.ip for r in results]
    assert len(set(got)) == 64
    assert {a.ip for a in store.allocations()} == set(got)
    assert sum(u.assigned for u in store.usage()) == 64


def test_parallel_borrows_from_two_processes_worth_of_connections(db_path):
    """Two Store objects (as an agent and a restarted agent overlapping) never hand out one
    address twice: BEGIN IMMEDIATE serialises them in SQLite itself."""
    a, b = Store(db_path), Store(db_path)
    a.add_eni(record(), ips(40))
    out = []

    def run(store, offset):
        for i in range(20):
            out.append(store.borrow(key(offset + i), PodInfo()).ip)

    threads = [threading.Thread(target=run, args=(a, 0)), threading.Thread(target=run, args=(b, 100))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(out) == 40 and len(set(out)) == 40


def test_borrow_is_idempotent_per_key(db_path):
    store = Store(db_path)
    store.add_eni(record(), ips(3))
    first = store.borrow(key(1), PodInfo("ns", "a"))
    again = store.borrow(key(1), PodInfo("ns", "a"))
    other_if = store.borrow(AllocationKey("net", "c1", "eth1"), PodInfo("ns", "a"))
    assert first == again
    assert other_if.ip != first.ip
    assert len(store.allocations()) == 2


def test_empty_pool_returns_none_and_changes_nothing(db_path):
    store = Store(db_path)
    store.add_eni(record(), ips(1))
    assert store.borrow(key(1), PodInfo()) is not None
    before = store.addresses()
    assert store.borrow(key(2), PodInfo()) is None
    assert store.addresses() == before
    assert store.get_allocation(key(2)) is None


def test_release_is_idempotent_and_cools(db_path):
    clock = Clock()
    store = Store(db_path, clock=clock)
    store.add_eni(record(), ips(1))
    ip = store.borrow(key(1), PodInfo()).ip
    assert store.release(key(1), cooldown=30).ip == ip
    assert store.release(key(1), cooldown=30) is None
    usage = store.usage()[0]
    assert (usage.free, usage.cooling, usage.assigned) == (0, 1, 0)
    assert store.borrow(key(2), PodInfo()) is None  # never a cooling address
    clock.now += 31
    usage = store.usage()[0]
    assert (usage.free, usage.cooling) == (1, 0)
    assert store.borrow(key(2), PodInfo()).ip == ip


def test_cooldown_survives_a_restart(db_path):
    clock = Clock()
    store = Store(db_path, clock=clock)
    store.add_eni(record(), ips(2))
    ip = store.borrow(key(1), PodInfo()).ip
    store.release(key(1), cooldown=30)
    store.close()
    clock.now += 10
    reopened = Store(db_path, clock=clock)
    fresh = reopened.borrow(key(2), PodInfo())
    assert fresh.ip != ip
    assert reopened.borrow(key(3), PodInfo()) is None
    clock.now += 25
    assert reopened.borrow(key(3), PodInfo()).ip == ip


def test_free_addresses_preferred_over_expired_cooling(db_path):
    clock = Clock()
    store = Store(db_path, clock=clock)
    store.add_eni(record(), ips(2))
    first = store.borrow(key(1), PodInfo()).ip
    store.release(key(1), cooldown=1)
    clock.now += 2
    assert store.borrow(key(2), PodInfo()).ip != first


def test_reserve_blocks_borrow_until_the_cloud_view_settles_it(db_path):
    """A failed give-back is settled by what the cloud holds, never by a guess: reserved
    addresses the cloud still has become free again, the others are forgotten."""
    store = Store(db_path)
    store.add_eni(record(), ips(3))
    reserved = store.reserve_free("eni-1", 3)
    assert len(reserved) == 3
    assert store.borrow(key(1), PodInfo()) is None
    store.apply_cloud_view([(record(), reserved[:1])])
    assert {a.ip for a in store.addresses()} == {reserved[0]}
    assert store.borrow(key(1), PodInfo()).ip == reserved[0]


def test_reserve_eni_refuses_a_busy_eni(db_path):
    store = Store(db_path)
    store.add_eni(record())
    store.add_eni(record("eni-2", 1, False), ips(2, base=50))
    store.borrow(key(1), PodInfo())
    assert store.reserve_eni("eni-2") is None
    store.release(key(1), cooldown=30)
    assert store.reserve_eni("eni-2") is None  # cooling still counts
    store2 = Store(db_path, clock=Clock(10**12))
    assert sorted(store2.reserve_eni("eni-2")) == ips(2, base=50)
    assert store2.borrow(key(9), PodInfo()) is None  # deleting ENI lends nothing


def test_apply_cloud_view_adds_drops_and_flags(db_path):
    store = Store(db_path)
    store.add_eni(record(), ips(3))
    kept = store.borrow(key(1), PodInfo()).ip  # 10.0.0.10
    dropped = store.borrow(key(2), PodInfo()).ip  # 10.0.0.11
    releasing = store.reserve_free("eni-1", 1)  # 10.0.0.12
    store.add_eni(record("eni-gone", 1, False), ["10.0.0.99"])
    view = [(record(), [kept, releasing[0], "10.0.0.20"])]
    lost = store.apply_cloud_view(view)
    assert [a.ip for a in lost] == [dropped]
    by_ip = {a.ip: a.state for a in store.addresses()}
    assert by_ip == {kept: "assigned", releasing[0]: "free", "10.0.0.20": "free"}
    assert [e.id for e in store.enis()] == ["eni-1"]
    flagged = store.get_allocation(key(2))
    assert flagged.lost and flagged.ip == dropped
    assert store.release(key(2), cooldown=30).lost  # released without touching addresses
    assert dropped not in {a.ip for a in store.addresses()}
