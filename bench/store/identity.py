"""The name this machine gives its records: `MEDQ_DEVICE`, else its host name."""

from __future__ import annotations

import os
import re
import socket

DEVICE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
DEVICE_ENV = "MEDQ_DEVICE"


def valid_device(name: str) -> bool:
    return re.fullmatch(DEVICE_PATTERN, name) is not None


def local_device() -> str:
    """`MEDQ_DEVICE` if set (must be a valid name), else the host name made valid."""
    name = os.environ.get(DEVICE_ENV)
    if name:
        if not valid_device(name):
            raise ValueError(f"{DEVICE_ENV}={name!r}: a device name is 1-64 letters, digits, "
                             "'.', '_' or '-', starting with a letter or digit")
        return name
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:64]
    return host or "localhost"
