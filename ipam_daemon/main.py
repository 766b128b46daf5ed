"""``underlay-agent --config PATH``: run the node agent until SIGTERM/SIGINT."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from ipam_daemon.agent import Agent
from ipam_daemon.config import ConfigError, load_config

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="underlay-agent", description=__doc__)
    parser.add_argument("--config", help="JSON configuration file (UNDERLAY_<KEY> overrides)")
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
    stop = threading.Event()
    agent = Agent(config)

    def on_signal(signum: int, _frame) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()
        agent.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
