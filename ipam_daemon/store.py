"""The node's IPAM state in SQLite (WAL mode): ENIs, their secondary addresses and the
allocations, keyed by (network, container id, ifname). The store owns state and nothing
else: no netlink, no cloud calls.

Every borrow and every release is ONE ``BEGIN IMMEDIATE`` transaction, committed (with
``synchronous=FULL``) before the caller answers, so a process killed at any instant leaves
either the whole change or none of it.

Address states::

    free       can be borrowed
    assigned   held by exactly one allocation
    cooling    released; not borrowable (and not "available") until ``cooldown_until``,
               a wall-clock time that survives restarts
    releasing  being given back to the cloud by the pool loop; never borrowable

Cooling addresses whose time has passed are borrowable; the counts treat them as free.

An address is either a secondary address of its ENI (``prefix`` empty) or one of the 16 of a
delegated /28 prefix (``prefix`` names it): a prefix is stored as its 16 addresses, and goes
back to the cloud whole, only when all 16 are free (``reserve_prefixes``). A store built with
``prefer_prefixes`` (prefix delegation) hands out addresses of the busiest prefix first, so
prefixes fill one by one and empty out again; without it, secondary addresses go first, so
the prefixes of a node switched back from prefix delegation drain.
"""
from __future__ import annotations

import ipaddress
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ipam_daemon.policy import PREFIX_SIZE, Holdings

logger = logging.getLogger(__name__)

FREE, ASSIGNED, COOLING, RELEASING = "free", "assigned", "cooling", "releasing"
# the network of placeholder allocations for addresses another plugin's pods use
FOREIGN_NETWORK = "underlay.io/other-plugin"


@dataclass(frozen=True)
class AllocationKey:
    network: str
    container_id: str
    ifname: str


@dataclass(frozen=True)
class PodInfo:
    namespace: str = ""
    name: str = ""
    uid: str = ""
    netns: str = ""


@dataclass(frozen=True)
class EniRecord:
    id: str
    mac: str
    subnet_id: str
    subnet_cidr: str
    device_index: int
    primary_ip: str
    is_primary: bool
    created_at: float
    deleting: bool = False


@dataclass(frozen=True)
class Allocation:
    key: AllocationKey
    ip: str
    eni_id: str
    pod: PodInfo
    created_at: float
    lost: bool = False  # the cloud no longer has this address (see reconcile)


@dataclass(frozen=True)
class AddressRow:
    ip: str
    eni_id: str
    state: str
    cooldown_until: float
    prefix: str = ""  # the delegated /28 it belongs to; "": a secondary address


@dataclass(frozen=True)
class PrefixUsage:
    """One delegated prefix's counts at one instant (cooling past its time counts as free)."""

    prefix: str
    eni_id: str
    free: int
    assigned: int
    cooling: int
    releasing: int


@dataclass(frozen=True)
class EniView:
    """What the cloud says one of our ENIs holds (reconcile)."""

    record: EniRecord
    ips: Sequence[str] = ()  # secondary addresses
    prefixes: Sequence[str] = ()  # delegated /28 prefixes


def prefix_addresses(prefix: str) -> list[str]:
    """The 16 addresses of a delegated /28, all of them usable by pods."""
    return [str(ip) for ip in ipaddress.IPv4Network(prefix)]


@dataclass(frozen=True)
class EniUsage(Holdings):
    """Per-ENI counts at one instant (cooling past its time counts as free)."""

    eni: EniRecord = field(kw_only=True)


MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE enis (
        id TEXT PRIMARY KEY, mac TEXT NOT NULL, subnet_id TEXT NOT NULL,
        subnet_cidr TEXT NOT NULL, device_index INTEGER NOT NULL, primary_ip TEXT NOT NULL,
        is_primary INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
        deleting INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE addresses (
        ip TEXT PRIMARY KEY,
        eni_id TEXT NOT NULL REFERENCES enis(id),
        state TEXT NOT NULL CHECK (state IN ('free', 'assigned', 'cooling', 'releasing')),
        cooldown_until REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX addresses_by_state ON addresses(state, eni_id);
    CREATE TABLE allocations (
        network TEXT NOT NULL, container_id TEXT NOT NULL, ifname TEXT NOT NULL,
        ip TEXT NOT NULL, eni_id TEXT NOT NULL,
        pod_namespace TEXT NOT NULL DEFAULT '', pod_name TEXT NOT NULL DEFAULT '',
        pod_uid TEXT NOT NULL DEFAULT '', netns TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL, lost INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (network, container_id, ifname)
    );
    CREATE UNIQUE INDEX allocations_one_per_ip ON allocations(ip) WHERE lost = 0;
    """,
    # 2: prefix delegation: an address may belong to a delegated /28 prefix
    """
    ALTER TABLE addresses ADD COLUMN prefix TEXT NOT NULL DEFAULT '';
    CREATE INDEX addresses_by_prefix ON addresses(prefix) WHERE prefix != '';
    """,
)

# an address a borrow may take now (free, or cooled down by :now)
_BORROWABLE = "(state = 'free' OR (state = 'cooling' AND cooldown_until <= :now))"


class StoreError(Exception):
    pass


class Store:
    """Thread-safe: one connection guarded by a lock; every public call is a transaction."""

    def __init__(self, path: str | Path, *, clock=time.time,
                 prefer_prefixes: bool = False) -> None:
        self.path = str(path)
        self.prefer_prefixes = prefer_prefixes
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(f"{self.path}: schema version {version} is newer than this "
                                 f"agent ({len(MIGRATIONS)}); refusing to touch it")
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {number + 1}")
                logger.info("state %s migrated to schema %d", self.path, number + 1)

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self._db.execute("PRAGMA user_version").fetchone()[0]

    # ---- borrow / release -------------------------------------------------------------

    def borrow(self, key: AllocationKey, pod: PodInfo) -> Allocation | None:
        """The allocation for ``key``: the existing one (idempotent) or a new one on a free
        address (lowest device index first, so higher ENIs drain; then the mode's kind of
        address; then the prefix with the fewest free addresses, so prefixes pack). None
        when none is free."""
        now = self._clock()
        with self._tx() as db:
            existing = self._get_allocation(db, key)
            if existing is not None:
                return existing
            row = db.execute(
                "SELECT a.ip, a.eni_id FROM addresses a JOIN enis e ON e.id = a.eni_id"
                " LEFT JOIN (SELECT prefix, COUNT(*) AS open FROM addresses"
                f" WHERE prefix != '' AND {_BORROWABLE} GROUP BY prefix) p"
                " ON p.prefix = a.prefix"
                " WHERE e.deleting = 0 AND (a.state = 'free' OR"
                " (a.state = 'cooling' AND a.cooldown_until <= :now))"
                " ORDER BY e.device_index, (a.prefix = '') = :prefixes, COALESCE(p.open, 0),"
                " a.prefix, a.state = 'cooling', a.ip LIMIT 1",
                {"now": now, "prefixes": int(self.prefer_prefixes)}).fetchone()
            if row is None:
                return None
            ip, eni_id = row
            db.execute("UPDATE addresses SET state = 'assigned', cooldown_until = 0"
                       " WHERE ip = ?", (ip,))
            db.execute(
                "INSERT INTO allocations (network, container_id, ifname, ip, eni_id,"
                " pod_namespace, pod_name, pod_uid, netns, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key.network, key.container_id, key.ifname, ip, eni_id, pod.namespace,
                 pod.name, pod.uid, pod.netns, now))
            return Allocation(key, ip, eni_id, pod, now)

    def release(self, key: AllocationKey, cooldown: float) -> Allocation | None:
        """Remove the allocation; its address cools for ``cooldown`` seconds. Unknown key:
        None (releasing twice is success)."""
        now = self._clock()
        with self._tx() as db:
            existing = self._get_allocation(db, key)
            if existing is None:
                return None
            db.execute("DELETE FROM allocations WHERE network = ? AND container_id = ?"
                       " AND ifname = ?", (key.network, key.container_id, key.ifname))
            if not existing.lost:
                db.execute("UPDATE addresses SET state = 'cooling', cooldown_until = ?"
                           " WHERE ip = ? AND state = 'assigned'", (now + cooldown, existing.ip))
            return existing

    def get_allocation(self, key: AllocationKey) -> Allocation | None:
        with self._lock:
            return self._get_allocation(self._db, key)

    @staticmethod
    def _get_allocation(db: sqlite3.Connection, key: AllocationKey) -> Allocation | None:
        row = db.execute(
            "SELECT ip, eni_id, pod_namespace, pod_name, pod_uid, netns, created_at, lost"
            " FROM allocations WHERE network = ? AND container_id = ? AND ifname = ?",
            (key.network, key.container_id, key.ifname)).fetchone()
        if row is None:
            return None
        return Allocation(key, row[0], row[1], PodInfo(row[2], row[3], row[4], row[5]),
                          row[6], bool(row[7]))

    def allocations(self, network: str | None = None) -> list[Allocation]:
        query = ("SELECT network, container_id, ifname, ip, eni_id, pod_namespace, pod_name,"
                 " pod_uid, netns, created_at, lost FROM allocations")
        args: tuple = ()
        if network is not None:
            query += " WHERE network = ?"
            args = (network,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at, ip", args).fetchall()
        return [Allocation(AllocationKey(r[0], r[1], r[2]), r[3], r[4],
                           PodInfo(r[5], r[6], r[7], r[8]), r[9], bool(r[10])) for r in rows]

    # ---- ENIs and addresses (the pool loop) ------------------------------------------------

    def enis(self) -> list[EniRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, mac, subnet_id, subnet_cidr, device_index, primary_ip, is_primary,"
                " created_at, deleting FROM enis ORDER BY device_index").fetchall()
        return [EniRecord(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], bool(r[8]))
                for r in rows]

    def addresses(self) -> list[AddressRow]:
        with self._lock:
            rows = self._db.execute("SELECT ip, eni_id, state, cooldown_until, prefix"
                                    " FROM addresses ORDER BY ip").fetchall()
        return [AddressRow(*r) for r in rows]

    def usage(self) -> list[EniUsage]:
        """Per-ENI counts, ENIs in device order."""
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT eni_id,"
                f" SUM({_BORROWABLE}),"
                " SUM(state = 'assigned'),"
                " SUM(state = 'cooling' AND cooldown_until > :now),"
                " SUM(state = 'releasing'),"
                " SUM(prefix = ''),"
                f" SUM(prefix = '' AND {_BORROWABLE}) FROM addresses GROUP BY eni_id",
                {"now": now}).fetchall()
            prefix_rows = self._db.execute(
                f"SELECT eni_id, COUNT(*), SUM(open = {PREFIX_SIZE}) FROM"
                f" (SELECT eni_id, prefix, SUM({_BORROWABLE}) AS open FROM addresses"
                " WHERE prefix != '' GROUP BY eni_id, prefix) GROUP BY eni_id",
                {"now": now}).fetchall()
        counts = {r[0]: r[1:] for r in rows}
        prefixes = {r[0]: r[1:] for r in prefix_rows}
        return [EniUsage(*(counts.get(eni.id) or (0,) * 6),
                         *(prefixes.get(eni.id) or (0, 0)), eni=eni) for eni in self.enis()]

    def prefixes(self) -> list[PrefixUsage]:
        """Every delegated prefix held, with its counts, by ENI and prefix."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT prefix, eni_id, SUM({_BORROWABLE}), SUM(state = 'assigned'),"
                " SUM(state = 'cooling' AND cooldown_until > :now), SUM(state = 'releasing')"
                " FROM addresses WHERE prefix != '' GROUP BY eni_id, prefix"
                " ORDER BY eni_id, prefix", {"now": self._clock()}).fetchall()
        return [PrefixUsage(*r) for r in rows]

    def add_eni(self, eni: EniRecord, ips: Iterable[str] = (),
                prefixes: Iterable[str] = ()) -> None:
        with self._tx() as db:
            self._upsert_eni(db, eni)
            self._add_ips(db, eni.id, ips)
            self._add_prefixes(db, eni.id, prefixes)

    def add_addresses(self, eni_id: str, ips: Iterable[str]) -> None:
        with self._tx() as db:
            self._add_ips(db, eni_id, ips)

    def add_prefixes(self, eni_id: str, prefixes: Iterable[str]) -> None:
        """Delegated /28 prefixes the cloud assigned to the ENI: their 16 addresses free."""
        with self._tx() as db:
            self._add_prefixes(db, eni_id, prefixes)

    @staticmethod
    def _add_prefixes(db: sqlite3.Connection, eni_id: str, prefixes: Iterable[str]) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO addresses (ip, eni_id, state, prefix) VALUES (?, ?, 'free', ?)",
            [(ip, eni_id, prefix) for prefix in prefixes for ip in prefix_addresses(prefix)])

    @staticmethod
    def _upsert_eni(db: sqlite3.Connection, eni: EniRecord) -> None:
        db.execute(
            "INSERT INTO enis (id, mac, subnet_id, subnet_cidr, device_index, primary_ip,"
            " is_primary, created_at, deleting) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET mac = excluded.mac, device_index ="
            " excluded.device_index, subnet_cidr = excluded.subnet_cidr, is_primary ="
            " excluded.is_primary, deleting = excluded.deleting",
            (eni.id, eni.mac, eni.subnet_id, eni.subnet_cidr, eni.device_index, eni.primary_ip,
             int(eni.is_primary), eni.created_at, int(eni.deleting)))

    @staticmethod
    def _add_ips(db: sqlite3.Connection, eni_id: str, ips: Iterable[str]) -> None:
        db.executemany("INSERT OR IGNORE INTO addresses (ip, eni_id, state) VALUES (?, ?, 'free')",
                       [(ip, eni_id) for ip in ips])

    def reserve_free(self, eni_id: str, count: int) -> list[str]:
        """Mark up to ``count`` free (never still-cooling) secondary addresses of the ENI as
        releasing, so no borrow takes them while the pool gives them back to the cloud."""
        now = self._clock()
        with self._tx() as db:
            rows = db.execute(f"SELECT ip FROM addresses WHERE eni_id = :eni AND prefix = ''"
                              f" AND {_BORROWABLE} ORDER BY ip DESC LIMIT :count",
                              {"eni": eni_id, "now": now, "count": count}).fetchall()
            ips = [r[0] for r in rows]
            db.executemany("UPDATE addresses SET state = 'releasing' WHERE ip = ?",
                           [(ip,) for ip in ips])
            return ips

    def reserve_prefixes(self, eni_id: str, count: int) -> list[str]:
        """Mark up to ``count`` whole prefixes of the ENI (all 16 addresses free, none still
        cooling) as releasing; the highest prefixes first. Returns the prefixes."""
        now = self._clock()
        with self._tx() as db:
            rows = db.execute(
                f"SELECT prefix FROM addresses WHERE eni_id = :eni AND prefix != ''"
                f" GROUP BY prefix HAVING SUM({_BORROWABLE}) = {PREFIX_SIZE}"
                " ORDER BY prefix DESC LIMIT :count",
                {"eni": eni_id, "now": now, "count": count}).fetchall()
            prefixes = [r[0] for r in rows]
            db.executemany("UPDATE addresses SET state = 'releasing' WHERE prefix = ?",
                           [(p,) for p in prefixes])
            return prefixes

    def remove_prefixes(self, prefixes: Sequence[str]) -> None:
        """Forget prefixes the cloud no longer holds for us (only releasing ones)."""
        with self._tx() as db:
            db.executemany("DELETE FROM addresses WHERE prefix = ? AND state = 'releasing'",
                           [(p,) for p in prefixes if p])

    def reserve_eni(self, eni_id: str) -> list[str] | None:
        """Mark an ENI for deletion if it holds no assigned or cooling address; its free
        addresses become releasing. None when the ENI is (no longer) empty."""
        now = self._clock()
        with self._tx() as db:
            busy = db.execute(
                "SELECT COUNT(*) FROM addresses WHERE eni_id = ? AND (state = 'assigned'"
                " OR (state = 'cooling' AND cooldown_until > ?))", (eni_id, now)).fetchone()[0]
            if busy:
                return None
            db.execute("UPDATE enis SET deleting = 1 WHERE id = ?", (eni_id,))
            db.execute("UPDATE addresses SET state = 'releasing' WHERE eni_id = ?", (eni_id,))
            return [r[0] for r in db.execute("SELECT ip FROM addresses WHERE eni_id = ?",
                                             (eni_id,))]

    def remove_addresses(self, ips: Sequence[str]) -> None:
        """Forget addresses the cloud no longer holds for us (only releasing ones)."""
        with self._tx() as db:
            db.executemany("DELETE FROM addresses WHERE ip = ? AND state = 'releasing'",
                           [(ip,) for ip in ips])

    def remove_eni(self, eni_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM addresses WHERE eni_id = ?", (eni_id,))
            db.execute("DELETE FROM enis WHERE id = ?", (eni_id,))

    def apply_cloud_view(self, enis: Sequence[EniView]) -> list[Allocation]:
        """Make the store agree with what the cloud says our ENIs hold, in one transaction:
        new addresses (secondary, or of a delegated prefix) become free, releasing ones
        still held become free again, addresses the cloud dropped are forgotten (an
        allocation on one is kept, flagged lost, and returned so the caller can log it
        loudly), ENIs not in the view are forgotten."""
        lost: list[Allocation] = []
        with self._tx() as db:
            seen = {view.record.id for view in enis}
            for view in enis:
                eni = view.record
                self._upsert_eni(db, eni)
                held = {ip: "" for ip in view.ips}
                held.update((ip, prefix) for prefix in view.prefixes
                            for ip in prefix_addresses(prefix))
                rows = db.execute("SELECT ip, state, prefix FROM addresses WHERE eni_id = ?",
                                  (eni.id,)).fetchall()
                known = {r[0]: r[1:] for r in rows}
                db.executemany(
                    "INSERT OR IGNORE INTO addresses (ip, eni_id, state, prefix)"
                    " VALUES (?, ?, 'free', ?)",
                    [(ip, eni.id, prefix) for ip, prefix in sorted(held.items())
                     if ip not in known])
                for ip, (state, prefix) in known.items():
                    if ip not in held:
                        lost += self._drop_address(db, ip)
                    elif state == RELEASING or prefix != held[ip]:
                        # still held (a give-back did not happen), or held otherwise than
                        # recorded: the cloud's word; an assigned address stays assigned
                        db.execute("UPDATE addresses SET prefix = ?, state = CASE state"
                                   " WHEN 'releasing' THEN 'free' ELSE state END WHERE ip = ?",
                                   (held[ip], ip))
            for (eni_id,) in db.execute("SELECT id FROM enis").fetchall():
                if eni_id not in seen:
                    for (ip,) in db.execute("SELECT ip FROM addresses WHERE eni_id = ?",
                                            (eni_id,)).fetchall():
                        lost += self._drop_address(db, ip)
                    db.execute("DELETE FROM enis WHERE id = ?", (eni_id,))
        return lost

    # ---- addresses another CNI plugin's pods use (migration onto underlay) -----------------

    def hold_foreign(self, ips: Iterable[str]) -> list[str]:
        """Addresses of our ENIs that pods of another plugin still use on this node (the AWS
        VPC CNI's, while a node moves over) become assigned to a placeholder allocation of
        network :data:`FOREIGN_NETWORK`, so no borrow hands them out; returns those held now."""
        now = self._clock()
        held = []
        with self._tx() as db:
            for ip in sorted(set(ips)):
                row = db.execute("SELECT eni_id FROM addresses WHERE ip = ? AND (state = 'free'"
                                 " OR state = 'cooling')", (ip,)).fetchone()
                taken = db.execute("SELECT 1 FROM allocations WHERE ip = ? AND lost = 0",
                                   (ip,)).fetchone()
                if row is None or taken is not None:
                    continue
                db.execute("UPDATE addresses SET state = 'assigned', cooldown_until = 0"
                           " WHERE ip = ?", (ip,))
                db.execute("INSERT INTO allocations (network, container_id, ifname, ip, eni_id,"
                           " created_at) VALUES (?, ?, '-', ?, ?, ?)",
                           (FOREIGN_NETWORK, f"route:{ip}", ip, row[0], now))
                held.append(ip)
        return held

    def release_foreign(self, still_used: Iterable[str], cooldown: float) -> list[str]:
        """Placeholder allocations whose address the other plugin no longer uses go back to
        the pool (cooling, as any released address); returns their addresses."""
        used = set(still_used)
        freed = []
        for allocation in self.allocations(FOREIGN_NETWORK):
            if allocation.ip not in used and self.release(allocation.key, cooldown) is not None:
                freed.append(allocation.ip)
        return freed

    def _drop_address(self, db: sqlite3.Connection, ip: str) -> list[Allocation]:
        db.execute("DELETE FROM addresses WHERE ip = ?", (ip,))
        row = db.execute("SELECT network, container_id, ifname FROM allocations"
                         " WHERE ip = ? AND lost = 0", (ip,)).fetchone()
        if row is None:
            return []
        key = AllocationKey(*row)
        db.execute("UPDATE allocations SET lost = 1 WHERE network = ? AND container_id = ?"
                   " AND ifname = ?", row)
        found = self._get_allocation(db, key)
        return [found] if found else []
