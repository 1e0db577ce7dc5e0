"""Cost model, profiles and the route / fetch / local predicate (pure: no I/O beyond reading profiles, no clocks)."""

from qroute.cost.model import PHASES, PRIMITIVES, CostModel, Phases, Shape, best_path, path_crossover_bytes
from qroute.cost.profile import PathSpec, Profile, builtin_names, load as load_profile

__all__ = [
    "PHASES",
    "PRIMITIVES",
    "CostModel",
    "PathSpec",
    "Phases",
    "Profile",
    "Shape",
    "best_path",
    "builtin_names",
    "load_profile",
    "path_crossover_bytes",
]
