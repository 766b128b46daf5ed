"""The embedded emulated EC2: moto behind a strict layer that behaves like EC2 where moto
does not (limits, subnet exhaustion, IPv4 prefix delegation and subnet CIDR reservations,
throttling, attach latency, injected faults)."""
from lab.ec2.control import ControlError, EmulatorControl
from lab.ec2.server import EmulatedCloud
from lab.ec2.settings import EmulatorSettings
from lab.ec2.world import World, WorldInstance, build_world

__all__ = ["ControlError", "EmulatedCloud", "EmulatorControl", "EmulatorSettings", "World",
           "WorldInstance", "build_world"]
