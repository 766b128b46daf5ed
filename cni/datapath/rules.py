"""Small netlink helpers shared by the pod datapaths and SNAT: policy rules matched by
address and priority, host routes, and turning netlink errors into messages that name
the step.
"""
from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cni.datapath import RULE_PRIO_FROM_POD, RULE_PRIO_TO_POD, DatapathError, PodSpec

logger = logging.getLogger(__name__)

MAIN_TABLE = 254
SCOPE_LINK = 253
NUD_PERMANENT = 0x80
# Errors that mean "already gone" when deleting: tolerated by every undo and teardown.
GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


@dataclass(frozen=True)
class Rule:
    """One IPv4 policy rule, as we create and compare them."""

    priority: int
    table: int
    src: str | None = None  # host address (/32) or None
    dst: str | None = None
    fwmark: int | None = None
    fwmask: int | None = None

    def describe(self) -> str:
        parts = []
        if self.src:
            parts.append(f"from {self.src}")
        if self.dst:
            parts.append(f"to {self.dst}")
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark:#x}/{(self.fwmask or 0xFFFFFFFF):#x}")
        table = "main" if self.table == MAIN_TABLE else str(self.table)
        return f"rule {' '.join(parts) or 'all'} lookup {table} (priority {self.priority})"

    def netlink_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"priority": self.priority, "table": self.table}
        if self.src:
            args.update(src=self.src, src_len=32)
        if self.dst:
            args.update(dst=self.dst, dst_len=32)
        if self.fwmark is not None:
            args.update(fwmark=self.fwmark, fwmask=self.fwmask or 0xFFFFFFFF)
        return args


def pod_rules(pod: PodSpec) -> tuple[Rule, ...]:
    """The policy rules a routed pod gets on the node."""
    if not pod.policy_routing:
        return ()  # vpc-route mode: the main table routes the pod both ways
    return (Rule(priority=RULE_PRIO_TO_POD, table=MAIN_TABLE, dst=pod.pod_ip),
            Rule(priority=RULE_PRIO_FROM_POD, table=pod.eni.table, src=pod.pod_ip))


@contextlib.contextmanager
def naming_step(what: str) -> Iterator[None]:
    """Re-raise netlink and OS errors of one step as DatapathError naming the step."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as exc:
        raise DatapathError(f"{what} failed: {exc.args[1] if len(exc.args) > 1 else exc}"
                            f" (errno {exc.code})") from None
    except OSError as exc:
        raise DatapathError(f"{what} failed: {exc.strerror or exc}") from None


def ignore_gone(action: Any, what: str) -> None:
    """Run an undo/teardown action; an object already gone is fine, anything else is logged."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        action()
    except NetlinkError as exc:
        if exc.code not in GONE:
            logger.warning("%s failed: %s", what, exc)
    except OSError as exc:
        if exc.errno not in GONE:
            logger.warning("%s failed: %s", what, exc)


def parse_rule(msg: Any) -> Rule:
    src = msg.get_attr("FRA_SRC") if msg["src_len"] == 32 else None
    dst = msg.get_attr("FRA_DST") if msg["dst_len"] == 32 else None
    return Rule(priority=msg.get_attr("FRA_PRIORITY") or 0,
                table=msg.get_attr("FRA_TABLE") or msg["table"],
                src=src, dst=dst, fwmark=msg.get_attr("FRA_FWMARK"),
                fwmask=msg.get_attr("FRA_FWMASK"))


def list_rules(ipr: Any) -> list[Rule]:
    return [parse_rule(m) for m in ipr.get_rules(family=2)]


def rules_for_ip(ipr: Any, ip: str, priorities: tuple[int, ...]) -> list[Rule]:
    """Our rules that mention ``ip`` as /32 source or destination at ``priorities``."""
    return [r for r in list_rules(ipr)
            if r.priority in priorities and ip in (r.src, r.dst)]


def add_rule(ipr: Any, rule: Rule) -> None:
    with naming_step(f"adding {rule.describe()}"):
        ipr.rule("add", **rule.netlink_args())


def delete_rule(ipr: Any, rule: Rule) -> None:
    ignore_gone(lambda: ipr.rule("del", **rule.netlink_args()), f"deleting {rule.describe()}")


def find_host_route_oif(ipr: Any, ip: str) -> int | None:
    """Interface index of the main-table route ``ip/32``, or None."""
    for route in ipr.get_routes(family=2, table=MAIN_TABLE):
        if (route.get_attr("RTA_TABLE") == MAIN_TABLE and route["dst_len"] == 32
                and route.get_attr("RTA_DST") == ip):
            return route.get_attr("RTA_OIF")
    return None


def find_link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def get_link(ipr: Any, index: int) -> Any | None:
    """The link message for ``index``, or None when it vanished (e.g. its netns is dying)."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        found = ipr.get_links(index)
    except NetlinkError as exc:
        if exc.code in GONE:
            return None
        raise
    return found[0] if found else None
