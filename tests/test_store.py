"""The SQLite store: one transaction per borrow/release, idempotency, concurrency,
cooldown that survives a restart, reconcile against a cloud view, schema versioning."""
from __future__ import annotations

import sqlite3
import threading

import pytest

from ipam_daemon.store import (
    MIGRATIONS, AllocationKey, EniRecord, EniView, PodInfo, Store, StoreError, prefix_addresses,
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
    store.apply_cloud_view([EniView(record(), reserved[:1])])
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
    view = [EniView(record(), [kept, releasing[0], "10.0.0.20"])]
    lost = store.apply_cloud_view(view)
    assert [a.ip for a in lost] == [dropped]
    by_ip = {a.ip: a.state for a in store.addresses()}
    assert by_ip == {kept: "assigned", releasing[0]: "free", "10.0.0.20": "free"}
    assert [e.id for e in store.enis()] == ["eni-1"]
    flagged = store.get_allocation(key(2))
    assert flagged.lost and flagged.ip == dropped
    assert store.release(key(2), cooldown=30).lost  # released without touching addresses
    assert dropped not in {a.ip for a in store.addresses()}


# ---- delegated prefixes ------------------------------------------------------------------

P1, P2 = "10.0.1.16/28", "10.0.1.32/28"


def test_a_prefix_is_its_sixteen_addresses_and_packs(db_path):
    """Prefix delegation: every address of a /28 is a pod's; borrows fill the busiest prefix
    first (device order first), so the other empties out and can go back whole."""
    store = Store(db_path, prefer_prefixes=True)
    store.add_eni(record(), ips(2), prefixes=[P1, P2])
    assert prefix_addresses(P1)[0] == "10.0.1.16" and len(prefix_addresses(P1)) == 16
    first = store.borrow(key(0), PodInfo())
    prefix_of_first = next(a.prefix for a in store.addresses() if a.ip == first.ip)
    taken = [store.borrow(key(i), PodInfo()).ip for i in range(1, 16)]
    rows = {a.ip: a for a in store.addresses()}
    assert {rows[ip].prefix for ip in taken} == {prefix_of_first}  # one prefix, full
    usage = store.usage()[0]
    assert (usage.singles, usage.free_singles, usage.prefixes, usage.free_prefixes) == (2, 2, 2, 1)
    assert usage.slots == 4 and usage.total == 34 and usage.assigned == 16
    # a pod leaves the full prefix: the next borrow goes back into it, not the empty one
    store.release(key(3), cooldown=0)
    again = store.borrow(key(99), PodInfo())
    assert rows[again.ip].prefix == prefix_of_first


def test_without_prefix_preference_secondary_addresses_go_first(db_path):
    store = Store(db_path)
    store.add_eni(record(), ips(1), prefixes=[P1])
    assert store.borrow(key(0), PodInfo()).ip == ips(1)[0]
    assert next(a.prefix for a in store.addresses()
                if a.ip == store.borrow(key(1), PodInfo()).ip) == P1


def test_a_prefix_goes_back_only_whole_and_cooled(db_path):
    clock = Clock()
    store = Store(db_path, clock=clock, prefer_prefixes=True)
    store.add_eni(record(), prefixes=[P1, P2])
    store.borrow(key(0), PodInfo())  # in P1 (lowest prefix first)
    assert store.reserve_prefixes("eni-1", 2) == [P2]  # P1 has a pod
    assert {a.state for a in store.addresses() if a.prefix == P2} == {"releasing"}
    assert store.reserve_free("eni-1", 16) == []  # prefix addresses never go one by one
    store.release(key(0), cooldown=30)
    assert store.reserve_prefixes("eni-1", 1) == []  # one address still cooling
    clock.now += 31
    assert store.reserve_prefixes("eni-1", 1) == [P1]
    store.remove_prefixes([P1, P2])
    assert store.addresses() == [] and store.borrow(key(1), PodInfo()) is None


def test_cloud_view_with_prefixes(db_path):
    """Reconcile: a prefix the cloud holds is 16 free addresses; a releasing prefix still
    held is free again; a prefix the cloud dropped flags its pod's allocation lost."""
    store = Store(db_path, prefer_prefixes=True)
    store.add_eni(record(), prefixes=[P1, P2])
    pod = store.borrow(key(0), PodInfo())
    store.reserve_prefixes("eni-1", 1)  # P2
    lost = store.apply_cloud_view([EniView(record(), [], [P2, "10.0.1.48/28"])])
    assert [a.ip for a in lost] == [pod.ip]
    states = {a.ip: (a.state, a.prefix) for a in store.addresses()}
    assert len(states) == 32 and set(states.values()) == {("free", P2), ("free", "10.0.1.48/28")}


def test_schema_1_state_migrates_to_prefixes(db_path):
    """A 0.1.0 agent's state (schema 1) gains the prefix column; its addresses are
    secondary addresses and its allocations stay."""
    conn = sqlite3.connect(db_path.parent.mkdir(parents=True) or db_path)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("INSERT INTO enis VALUES ('eni-1', 'm', 's', '10.0.0.0/24', 0, '10.0.0.4', 1,"
                 " 0, 0)")
    conn.execute("INSERT INTO addresses VALUES ('10.0.0.10', 'eni-1', 'assigned', 0)")
    conn.execute("INSERT INTO allocations (network, container_id, ifname, ip, eni_id,"
                 " created_at) VALUES ('net', 'c0', 'eth0', '10.0.0.10', 'eni-1', 0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    store = Store(db_path)
    assert store.schema_version == 2
    assert [(a.ip, a.prefix) for a in store.addresses()] == [("10.0.0.10", "")]
    assert store.get_allocation(key(0)).ip == "10.0.0.10"
    assert store.usage()[0].singles == 1
