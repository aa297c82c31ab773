"""A faithful local stand-in for the BFL FLUX API, nasty parts included, for tests and demos.

``running_simulator(SimConfig(time_scale=0.01))`` in tests; ``serve()`` behind ``fluxq simulator``.
"""

from simulator.accounts import account_label
from simulator.app import create_app
from simulator.config import SimConfig
from simulator.engine import Simulator
from simulator.faults import parse_faults
from simulator.latency import parse_latency
from simulator.server import SimulatorServer, running_simulator, serve
from simulator.webhooks import webhook_signature

__all__ = [
    "SimConfig",
    "Simulator",
    "SimulatorServer",
    "account_label",
    "create_app",
    "parse_faults",
    "parse_latency",
    "running_simulator",
    "serve",
    "webhook_signature",
]
