"""``underlay-status``: the pool as a table, from the status endpoint or the agent socket."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.request

from ipam_daemon.client import AgentClient

logger = logging.getLogger(__name__)


def fetch_pool(endpoint: str | None, socket_path: str | None, timeout: float = 5.0) -> dict:
    if socket_path:
        client = AgentClient(socket_path, timeout)
        try:
            status, body = client.get("/v1/pool")
        finally:
            client.close()
        if status != 200:
            raise RuntimeError(f"agent answered {status}: {body}")
        return body
    with urllib.request.urlopen(f"{endpoint.rstrip('/')}/v1/pool", timeout=timeout) as reply:
        return json.load(reply)


def format_pool(pool: dict) -> str:
    lines = [f"capacity {pool['capacity']}  held {pool['total']}  assigned {pool['assigned']}"
             f"  warm {pool['warm']}  cooling {pool['cooling']}  ENIs {pool['enis']}"
             f"/{pool['max_enis']}  ready {'yes' if pool['ready'] else 'no'}"]
    if pool.get("prefix_delegation") or pool.get("prefixes"):
        lines.append(f"mode {pool.get('mode', '?')}  prefixes {pool.get('prefixes', 0)}"
                     f" ({pool.get('prefixes_free', 0)} whole free)")
    for what in ("blocked", "notice"):
        if pool.get(what):
            lines.append(f"{what} (code {pool[what]['code']}): {pool[what]['msg']}")
    header = ("ENI", "DEV", "SUBNET", "CAP", "FREE", "ASSIGNED", "COOLING", "SLOTS", "PREFIXES")
    rows = [header] + [(e["id"] + (" *" if e["primary"] else ""), str(e["device_index"]),
                        e["subnet"], str(e["capacity"]), str(e["free"]), str(e["assigned"]),
                        str(e["cooling"]), f"{e.get('slots_used', '-')}/{e.get('slots', '-')}",
                        _prefix_cell(e.get("prefixes") or []))
                       for e in pool["per_eni"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _prefix_cell(prefixes: list[dict]) -> str:
    """``10.0.1.16/28 (12 in use), 10.0.1.32/28 (free)``; ``-`` for none."""
    if not prefixes:
        return "-"
    return ", ".join(f"{p['prefix']} ({p['assigned'] + p['cooling']} in use)"
                     if p["assigned"] + p["cooling"] else f"{p['prefix']} (free)"
                     for p in prefixes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="underlay-status", description=__doc__)
    parser.add_argument("--endpoint", default="http://127.0.0.1:61680")
    parser.add_argument("--socket", help="read from the agent socket instead of the endpoint")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    args = parser.parse_args(argv)
    try:
        pool = fetch_pool(args.endpoint, args.socket)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"underlay-status: cannot read the pool: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(pool, indent=2) if args.json else format_pool(pool))
    return 0


if __name__ == "__main__":
    sys.exit(main())
