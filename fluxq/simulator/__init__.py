"""A faithful local stand-in for the BFL FLUX API, nasty parts included, for tests and demos.

``running_simulator(SimConfig(time_scale=0.01))`` in tests; ``serve()`` behind ``fluxq simulator``.
"""

from fluxq.simulator.accounts import account_label
from fluxq.simulator.app import create_app
from fluxq.simulator.config import SimConfig
from fluxq.simulator.engine import Simulator
from fluxq.simulator.faults import parse_faults
from fluxq.simulator.latency import parse_latency
from fluxq.simulator.server import SimulatorServer, running_simulator, serve
from fluxq.simulator.webhooks import webhook_signature

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
