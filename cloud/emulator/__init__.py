"""The embedded emulated EC2: moto behind a strict layer that behaves like EC2 where moto
does not (limits, subnet exhaustion, throttling, attach latency, injected faults)."""
from cloud.emulator.control import ControlError, EmulatorControl
from cloud.emulator.server import EmulatedCloud
from cloud.emulator.settings import EmulatorSettings
from cloud.emulator.world import World, WorldInstance, build_world

__all__ = ["ControlError", "EmulatedCloud", "EmulatorControl", "EmulatorSettings", "World",
           "WorldInstance", "build_world"]
