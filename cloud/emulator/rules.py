"""EC2's rules that moto does not enforce (stub: passes everything on)."""
from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable

from cloud.emulator.wire import ApiRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    params: list[tuple[str, str]] | None = None
    after: Callable[[bytes], bytes] | None = None


@dataclass(frozen=True)
class RuleContext:
    backend: Any
    allocator: "AddressAllocator"
    route_table_limit: int


class AddressAllocator:
    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()


def check_request(request: ApiRequest, context: RuleContext) -> Verdict:
    return Verdict()
