"""Provider emulator: a local server speaking the DashScope and LiblibAI APIs, with faults injectable at run time.

It lets imaged (and third-party clients such as the official `dashscope` SDK) run with no keys and no network; it
never fetches a URL found in a request.
"""

from .config import SimulatorConfig, key_label
from .faults import FaultSpec
from .server import Simulator, build_stats, run_simulator

__all__ = ["FaultSpec", "Simulator", "SimulatorConfig", "build_stats", "key_label", "run_simulator"]
