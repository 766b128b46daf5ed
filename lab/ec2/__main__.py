"""``python -m lab.ec2``: start the emulated EC2, build a world,
print one JSON line (endpoint, region, ids) on stdout, serve until SIGTERM or SIGINT."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from typing import Sequence

from lab.ec2.server import EmulatedCloud
from lab.ec2.settings import EmulatorSettings
from lab.ec2.world import build_world, validate_layout

logger = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lab.ec2", description=__doc__)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--instance-type", default="m5.large")
    parser.add_argument("--vpc-cidr", default="10.0.0.0/16")
    parser.add_argument("--subnet", action="append", dest="subnets", metavar="CIDR",
                        help="a subnet CIDR (repeatable; default 10.0.0.0/24)")
    parser.add_argument("--port", type=int, default=0, help="127.0.0.1 port (0: any free)")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--cluster", default="underlay-test")
    parser.add_argument("--attach-latency", type=float, default=0.0, metavar="SECONDS")
    parser.add_argument("--no-buckets", action="store_true",
                        help="switch EC2's request token buckets off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    subnets = tuple(args.subnets or ("10.0.0.0/24",))
    try:
        settings = EmulatorSettings(attach_latency=args.attach_latency,
                                    buckets_enabled=not args.no_buckets, seed=args.seed)
        validate_layout(args.vpc_cidr, subnets, args.nodes)
    except ValueError as exc:
        print(f"lab.ec2: {exc}", file=sys.stderr)
        return 2
    try:
        cloud = EmulatedCloud.start(port=args.port, region=args.region, settings=settings)
    except (OSError, ValueError) as exc:
        print(f"lab.ec2: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 2
    try:
        world = build_world(cloud.endpoint, region=args.region, nodes=args.nodes,
                            instance_type=args.instance_type, vpc_cidr=args.vpc_cidr,
                            subnet_cidrs=subnets,
                            cluster=args.cluster)
        print(json.dumps(world.to_dict()), flush=True)
        while not stop.wait(1.0):
            pass
    except ValueError as exc:
        print(f"lab.ec2: {exc}", file=sys.stderr)
        return 2
    finally:
        cloud.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
