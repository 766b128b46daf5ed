"""Put the node's network namespace back as it was before the agent ran: the reverse of
what ``cni.datapath.hostrecord`` noted, plus what is ours by name. Run by ``underlay-install
uninstall`` in the node's namespace (the uninstall DaemonSet has ``hostNetwork``) after the
agent is gone.

Removed or restored, in this order:

1. SNAT: the jumps from PREROUTING/POSTROUTING, the chains ``UNDERLAY-CONNMARK``,
   ``UNDERLAY-EGRESS``, ``UNDERLAY-SNAT`` and the rule ``fwmark 0x80/0x80 lookup main``
   (priority 1024);
2. the ENI route tables the agent owned (device index + 1), emptied;
3. host veths a killed agent had handed to its reaper (``ulrm*``) and ipvlan mode's
   host slaves (``ipvl<N>``);
4. each ENI link's MTU and up/down state, as they were before the agent first changed them;
5. the sysctls the agent wrote (``ip_forward``, ``rp_filter`` of ENI links), to their old
   values; then the record itself goes.

Without a record (no agent ever ran, or datapath none) nothing is touched. Pods still
wired by underlay (rules at priorities 512/1536, host veths ``ulay*``) would
lose their connectivity, so they stop the clean-up before it changes anything, named in the
error, unless ``force`` is given (then their rules and veths go too).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from cni.datapath import HOST_VETH_PREFIX, RULE_PRIO_FROM_POD, RULE_PRIO_TO_POD, DatapathError
from cni.datapath.hostrecord import read_record
from cni.datapath.rules import delete_rule, list_rules

logger = logging.getLogger(__name__)

POD_PRIORITIES = (RULE_PRIO_TO_POD, RULE_PRIO_FROM_POD)


def find_wired_pods(ipr) -> list[str]:
    """What underlay pods still hold on the node: their rules and host veths."""
    found = [r.describe() for r in list_rules(ipr)
             if r.priority in POD_PRIORITIES and (r.src or r.dst)]
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME") or ""
        if name.startswith(HOST_VETH_PREFIX):
            found.append(f"host veth {name}")
    return found


def _delete_links(ipr, prefix: str, kind: str | None, done: list[str]) -> None:
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME") or ""
        info = link.get_attr("IFLA_LINKINFO")
        link_kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if name.startswith(prefix) and (kind is None or link_kind == kind):
            ipr.link("del", index=link["index"])
            done.append(f"link {name}")


def _flush_table(ipr, table: int, done: list[str]) -> None:
    routes = [r for r in ipr.get_routes(family=2, table=table)
              if r.get_attr("RTA_TABLE") == table]
    for route in routes:
        spec = {"table": table, "dst": f"{route.get_attr('RTA_DST') or '0.0.0.0'}/"
                                       f"{route['dst_len']}", "scope": route["scope"]}
        if route.get_attr("RTA_GATEWAY"):
            spec["gateway"] = route.get_attr("RTA_GATEWAY")
        if route.get_attr("RTA_OIF"):
            spec["oif"] = route.get_attr("RTA_OIF")
        ipr.route("del", **spec)
    if routes:
        done.append(f"route table {table} ({len(routes)} routes)")


def _restore_links(ipr, links: dict, done: list[str]) -> None:
    from cni.datapath.eni import find_link_by_mac

    for mac, before in sorted(links.items()):
        link = find_link_by_mac(ipr, mac)
        if link is None:
            continue  # the ENI was detached meanwhile
        name = link.get_attr("IFLA_IFNAME")
        if before.get("mtu") and link.get_attr("IFLA_MTU") != before["mtu"]:
            ipr.link("set", index=link["index"], mtu=before["mtu"])
            done.append(f"link {name} mtu {before['mtu']}")
        if not before.get("up", True) and link["flags"] & 0x1:
            ipr.link("set", index=link["index"], state="down")
            done.append(f"link {name} down")


def _restore_sysctls(sysctls: dict, done: list[str]) -> None:
    for name, value in sorted(sysctls.items()):
        path = Path("/proc/sys/" + name.replace(".", "/"))
        if not path.exists():
            continue  # the link it belonged to is gone
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
                done.append(f"sysctl {name}={value}")
        except OSError as exc:
            raise DatapathError(f"cannot restore sysctl {name}={value}: {exc.strerror}") from None


def remove_host_changes(record_path: str | os.PathLike[str], *, force: bool = False) -> list[str]:
    """Undo the agent's changes to this namespace; returns what was done, one line each.
    DatapathError (nothing changed) while pods are still wired and ``force`` is off."""
    from pyroute2 import IPRoute

    from cni.datapath.ipvlan import HOST_SLAVE_PREFIX
    from cni.datapath.snat import list_snat_chains, remove_snat
    from cni.datapath.veth import REAPED_PREFIX

    if not Path(record_path).exists():
        logger.info("uninstall: no %s, so the agent changed no network setting here", record_path)
        return []
    record = read_record(record_path)
    done: list[str] = []
    with IPRoute() as ipr:
        wired = find_wired_pods(ipr)
        if wired and not force:
            raise DatapathError(
                f"pods are still wired by underlay ({'; '.join(wired[:6])}"
                f"{f'; {len(wired) - 6} more' if len(wired) > 6 else ''}): delete the node's"
                " pods (or drain it) first, or pass --force to cut them off too")
        if record["snat"] or list_snat_chains():
            remove_snat()
            done.append("SNAT chains, jumps and the fwmark rule")
        for rule in list_rules(ipr):
            if rule.priority in POD_PRIORITIES and (rule.src or rule.dst):
                delete_rule(ipr, rule)
                done.append(rule.describe())
        _delete_links(ipr, HOST_VETH_PREFIX, "veth", done)
        _delete_links(ipr, REAPED_PREFIX, None, done)
        _delete_links(ipr, HOST_SLAVE_PREFIX, "ipvlan", done)
        for table in sorted(record["tables"]):
            _flush_table(ipr, table, done)
        _restore_links(ipr, record["links"], done)
    _restore_sysctls(record["sysctls"], done)
    Path(record_path).unlink(missing_ok=True)
    for line in done:
        logger.info("uninstall: removed or restored %s", line)
    return done
