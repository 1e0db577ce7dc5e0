"""The one error type qroute raises for bad input; the CLI turns it into a one-line message and exit code 2."""


class QrouteError(ValueError):
    """Bad input: the message names the bad value and what was expected."""


def require(condition: bool, message: str) -> None:
    """Raise `QrouteError(message)` unless `condition` holds."""
    if not condition:
        raise QrouteError(message)


def positive_int(name: str, value) -> int:
    """`value` as an int >= 1, or a QrouteError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise QrouteError(f"{name}={value!r}: expected an integer >= 1")
    return value


def non_negative_int(name: str, value) -> int:
    """`value` as an int >= 0, or a QrouteError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise QrouteError(f"{name}={value!r}: expected an integer >= 0")
    return value
