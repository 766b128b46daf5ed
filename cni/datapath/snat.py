"""SNAT of pod traffic leaving the VPC, with the iptables binary (nf_tables backend).

Runs in the node's namespace (the calling thread's; iptables inherits it).

Why more than one SNAT rule: a pod's "from <podIP>" rule (priority 1536) sends its traffic
out of the ENI that owns its IP. Traffic SNATed to the node's primary IP must instead
leave through the primary ENI: the VPC drops packets whose source the sending ENI does
not own (source/destination check). As AWS VPC CNI does, we classify such connections
with a connection mark and route marked packets by the main table, whose default route
is the primary ENI's:

  mangle PREROUTING -> UNDERLAY-CONNMARK
    ! -i ulay+ -d <primary IP> NEW        CONNMARK set 0x80: connections *to* the node's
                                          primary IP (NodePort/hostPort, DNATed to a pod
                                          later): the pod's replies must leave where the
                                          request came in (decided before DNAT, on purpose)
    -i ulay+                              CONNMARK restore to the packet mark (0x80 only)
  nat PREROUTING (appended) -> UNDERLAY-EGRESS, for -i ulay+ (nat sees a connection's
                                          first packet only)
    RETURN for VPC CIDRs, excluded CIDRs and local addresses; otherwise CONNMARK set 0x80
    and MARK set 0x80 (the first packet itself; later ones get it from the restore)
  rule fwmark 0x80/0x80 lookup main  priority 1024 (before the pods' 1536 rules)
  nat POSTROUTING -> UNDERLAY-SNAT
    RETURN for VPC CIDRs and excluded CIDRs
    connmark 0x80/0x80, destination not local -> SNAT --to-source <primary IP> --random-fully

The egress decision sits in nat PREROUTING, after kube-proxy's DNAT: kube-proxy prepends
its jump there and a DNAT ends the chain, so a pod's connection to a Service IP outside
the VPC CIDRs that lands on a VPC endpoint is never marked and keeps its own ENI (marking
in mangle, before DNAT, would push it out of the primary ENI with the pod's source, where
the VPC drops it). Replies to SNATed traffic come back to the primary IP on the primary
ENI, conntrack restores the pod's address and rule 512 (to <podIP> lookup main) hands
them to the veth; the ENI's loose rp_filter (set by ensure_eni) lets them in although the
pod's own rule points at another ENI's table. Chains are rebuilt atomically with
``iptables-restore --noflush`` (declaring a chain flushes it), jumps are added once.
"""
from __future__ import annotations

import ipaddress
import logging
import subprocess

from cni.datapath import HOST_VETH_PREFIX, DatapathError, SnatConfig
from cni.datapath.rules import MAIN_TABLE, Rule, add_rule, delete_rule, list_rules

logger = logging.getLogger(__name__)

MARK = 0x80
RULE_PRIO_MARK = 1024
MARK_RULE = Rule(priority=RULE_PRIO_MARK, table=MAIN_TABLE, fwmark=MARK, fwmask=MARK)
CHAIN_CONNMARK = "UNDERLAY-CONNMARK"
CHAIN_EGRESS = "UNDERLAY-EGRESS"
CHAIN_SNAT = "UNDERLAY-SNAT"
PODS = HOST_VETH_PREFIX + "+"
# (table, parent chain, match before the jump, our chain)
JUMPS = (("mangle", "PREROUTING", (), CHAIN_CONNMARK),
         ("nat", "PREROUTING", ("-i", PODS), CHAIN_EGRESS),
         ("nat", "POSTROUTING", (), CHAIN_SNAT))
CHAINS = (("mangle", CHAIN_CONNMARK), ("nat", CHAIN_EGRESS), ("nat", CHAIN_SNAT))
LOCK_WAIT = "5"  # seconds to wait for the xtables lock
TIMEOUT = 20.0  # seconds for any iptables process


def validate_snat(cfg: SnatConfig) -> None:
    try:
        ipaddress.IPv4Address(cfg.primary_ip)
    except ValueError:
        raise DatapathError(f"snat primary_ip {cfg.primary_ip!r} is not an IPv4 address") \
            from None
    if not cfg.vpc_cidrs:
        raise DatapathError("snat vpc_cidrs is empty: every destination would be SNATed")
    for key, cidrs in (("vpc_cidrs", cfg.vpc_cidrs), ("excluded_cidrs", cfg.excluded_cidrs)):
        if isinstance(cidrs, str):
            raise DatapathError(f"snat {key} must be a list of CIDRs, not the string {cidrs!r}")
        for cidr in cidrs:
            try:
                ipaddress.IPv4Network(cidr, strict=False)
            except (ValueError, TypeError):
                raise DatapathError(f"snat {key}: {cidr!r} is not an IPv4 CIDR") from None


def _cidrs(values: tuple[str, ...]) -> list[str]:
    return [str(ipaddress.IPv4Network(c, strict=False)) for c in values]


def render_rules(cfg: SnatConfig) -> str:
    """The iptables-restore input for our chains (pure; tested on its own)."""
    skip = _cidrs(cfg.vpc_cidrs) + _cidrs(cfg.excluded_cidrs)
    mark = f"{MARK:#x}/{MARK:#x}"
    lines = ["*mangle", f":{CHAIN_CONNMARK} - [0:0]",
             f"-A {CHAIN_CONNMARK} ! -i {PODS} -d {cfg.primary_ip}/32 -m conntrack "
             f"--ctstate NEW -m comment --comment \"underlay: reply via primary ENI\" "
             f"-j CONNMARK --set-xmark {mark}",
             f"-A {CHAIN_CONNMARK} -i {PODS} -j CONNMARK --restore-mark "
             f"--nfmask {MARK:#x} --ctmask {MARK:#x}",
             "COMMIT", "*nat", f":{CHAIN_EGRESS} - [0:0]", f":{CHAIN_SNAT} - [0:0]"]
    lines += [f"-A {CHAIN_EGRESS} -d {c} -j RETURN" for c in skip]
    lines += [f"-A {CHAIN_EGRESS} -m addrtype --dst-type LOCAL -j RETURN",
              f"-A {CHAIN_EGRESS} -m comment --comment \"underlay: leaves the VPC\" "
              f"-j CONNMARK --set-xmark {mark}",
              f"-A {CHAIN_EGRESS} -j MARK --set-xmark {mark}"]
    lines += [f"-A {CHAIN_SNAT} -d {c} -j RETURN" for c in skip]
    lines += [f"-A {CHAIN_SNAT} -m connmark --mark {mark} -m addrtype ! --dst-type LOCAL "
              f"-m comment --comment \"underlay: SNAT to primary IP\" "
              f"-j SNAT --to-source {cfg.primary_ip} --random-fully",
              "COMMIT", ""]
    return "\n".join(lines)


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)
    except FileNotFoundError:
        raise DatapathError(f"{argv[0]} not found (install iptables)") from None
    except subprocess.TimeoutExpired:
        raise DatapathError(f"{' '.join(argv)} did not finish within {TIMEOUT:g} s") from None


def _iptables(*args: str) -> subprocess.CompletedProcess:
    return _run(["iptables", "-w", LOCK_WAIT, *args])


def _has_jump(table: str, parent: str, match: tuple[str, ...], chain: str) -> bool:
    return _iptables("-t", table, "-C", parent, *match, "-j", chain).returncode == 0


def ensure_snat(cfg: SnatConfig) -> None:
    """Install (or update in place) SNAT per ``cfg``; with ``enabled=False`` remove it."""
    validate_snat(cfg)
    if not cfg.enabled:
        remove_snat()
        return
    done = _run(["iptables-restore", "-w", LOCK_WAIT, "--noflush"], render_rules(cfg))
    if done.returncode != 0:
        raise DatapathError(f"iptables-restore of the SNAT chains failed: "
                            f"{done.stderr.strip()}")
    for table, parent, match, chain in JUMPS:
        if not _has_jump(table, parent, match, chain):
            added = _iptables("-t", table, "-A", parent, *match, "-j", chain)
            if added.returncode != 0:
                raise DatapathError(f"adding jump {table} {parent} -> {chain} failed: "
                                    f"{added.stderr.strip()}")
    _ensure_mark_rule()
    logger.info("SNAT to %s for destinations outside %s (excluded %s)", cfg.primary_ip,
                ",".join(cfg.vpc_cidrs), ",".join(cfg.excluded_cidrs) or "none")


def _ensure_mark_rule() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        if MARK_RULE not in list_rules(ipr):
            add_rule(ipr, MARK_RULE)


def remove_snat() -> None:
    """Remove our jumps, chains and mark rule; anything already gone is fine."""
    from pyroute2 import IPRoute

    for table, parent, match, chain in JUMPS:
        for _ in range(16):  # duplicates from a crashed older version, bounded
            if not _has_jump(table, parent, match, chain):
                break
            _iptables("-t", table, "-D", parent, *match, "-j", chain)
    for table, chain in CHAINS:
        _iptables("-t", table, "-F", chain)
    failures = []
    for table, chain in CHAINS:
        gone = _iptables("-t", table, "-X", chain)
        if gone.returncode != 0 and "No chain" not in gone.stderr \
                and "does not exist" not in gone.stderr:
            failures.append(f"{table} {chain}: {gone.stderr.strip()}")
    with IPRoute() as ipr:
        for rule in [r for r in list_rules(ipr) if r == MARK_RULE]:
            delete_rule(ipr, rule)
    if failures:
        raise DatapathError("removing SNAT chains failed: " + "; ".join(failures))
    logger.info("SNAT removed")


def list_snat_chains() -> dict[str, str]:
    """Current text of our chains (for checks and tests), keyed by "table chain"."""
    out = {}
    for table, chain in CHAINS:
        shown = _iptables("-t", table, "-S", chain)
        if shown.returncode == 0:
            out[f"{table} {chain}"] = shown.stdout
    return out
