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
