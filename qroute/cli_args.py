"""argparse value types shared by the subcommands: each error names the bad value and what was expected."""

from __future__ import annotations

import argparse

from qroute.errors import QrouteError


def int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected an integer >= {minimum}")
        return value

    return parse


def int_any(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def int_list(text: str) -> tuple[int, ...]:
    parse = int_at_least(1)
    values = tuple(parse(v) for v in text.split(",") if v.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers >= 1")
    return values


def names(text: str) -> tuple[str, ...]:
    values = tuple(p.strip() for p in text.split(",") if p.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated names")
    return values


def fabric_links(text: str) -> tuple:
    """`veth,shaped:200mbit,far:500us` -> LinkSpecs (plain veth, tbf-shaped veth, userspace delay line)."""
    from qroute.fabric import LinkSpec

    links = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, setting = part.partition(":")
        try:
            if not setting:
                links.append(LinkSpec(name))
            elif setting.endswith("mbit"):
                links.append(LinkSpec(name, "veth", rate_mbit=float(setting[:-4])))
            elif setting.endswith("us"):
                links.append(LinkSpec(name, "delay", delay_us=float(setting[:-2])))
            else:
                raise argparse.ArgumentTypeError(f"link {part!r}: expected NAME, NAME:RATEmbit or NAME:DELAYus")
        except (QrouteError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"link {part!r}: {exc}") from None
    if not links:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least one link")
    return tuple(links)


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number between 0 and 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number between 0 and 1")
    return value


def positive_float(text: str) -> float:
    """A number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number > 0") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number > 0")
    return value


def non_negative_float(text: str) -> float:
    """A number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number >= 0") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number >= 0")
    return value


def add_agent_workload_args(g, agents: int, decode_steps: int, topk_blocks: int, rate: float) -> None:
    """The agent-workload flags that `bench-agents` and `simulate` share (their defaults differ)."""
    g.add_argument("--agents", type=int_at_least(1), default=agents, help="sub-agents (default: %(default)s)")
    g.add_argument("--steps", type=int_at_least(1), default=4, help="requests per agent, one after another (default: %(default)s)")
    g.add_argument("--decode-steps", type=int_list, default=(decode_steps,), help=f"decode steps per request, drawn from these (default: {decode_steps})")
    g.add_argument("--step-tokens", type=int_at_least(1), default=1, help="tokens decoded per step (default: %(default)s)")
    g.add_argument("--topk-blocks", type=int_at_least(1), default=topk_blocks, help="blocks selected per request with --sparse (default: %(default)s)")
    g.add_argument("--sparse", action="store_true", help="select the top-k blocks of a chunk instead of the whole chunk")
    g.add_argument("--zipf", type=float, default=1.1, help="popularity skew over chunks, 0 = uniform (default: %(default)s)")
    g.add_argument("--persistence", type=fraction, default=0.5, help="probability an agent's next request stays in its working set (default: %(default)s)")
    g.add_argument("--arrival", choices=("poisson", "closed"), default="poisson", help="arrival process ordering the requests (default: %(default)s)")
    g.add_argument("--rate", type=positive_float, default=rate, help="poisson: requests per virtual second, all agents (default: %(default)s)")
    g.add_argument("--seed", type=int_at_least(0), default=0, help="random seed: the workload, and the weights where the command builds a model (default: %(default)s)")
    g.add_argument("--trace", default=None, help="replay this JSONL trace (qroute.trace/1) instead of generating")  # fmt: skip

