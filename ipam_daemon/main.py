"""``underlay-agent --config PATH``: run the node agent until SIGTERM/SIGINT.

With ``kubernetes`` on, the Kubernetes bridge starts first: node identity from the Node's
providerID and the per-node override (a bounded wait; an unreachable API server means the
configuration file as it is), then the agent with the merged configuration."""
from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import sys
import threading

from ipam_daemon.agent import Agent
from ipam_daemon.config import ConfigError, load_config
from ipam_daemon.version import VERSION

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="underlay-agent", description=__doc__)
    parser.add_argument("--config", help="JSON configuration file (UNDERLAY_<KEY> overrides)")
    parser.add_argument("--version", action="version", version=f"underlay {VERSION}")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"underlay-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logger.info("underlay-agent %s starting (python %s)", VERSION, platform.python_version())
    stop = threading.Event()
    agent: Agent | None = None

    def on_signal(signum: int, _frame) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()
        if agent is not None:
            agent.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bridge = None
    if config.kubernetes != "off":
        from ipam_daemon.kube_bridge import KubeBridge

        try:
            bridge = KubeBridge(config, env=os.environ)
        except ValueError as exc:
            logger.error("kubernetes: %s", exc)
            return 2
        config = bridge.start(stop)
        if stop.is_set():
            bridge.stop()
            return 0
    agent = Agent(config, observer=bridge)
    if stop.is_set():
        agent.stopping.set()
    try:
        agent.start()
    except (ValueError, RuntimeError) as exc:
        logger.error("agent cannot start: %s", exc)
        agent.stop()
        return 1
    except Exception:
        if not stop.is_set():
            logger.exception("agent failed to start")
            agent.stop()
            return 1
    stop.wait()
    agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
