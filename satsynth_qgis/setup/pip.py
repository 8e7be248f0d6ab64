"""What pip's output says: the lines that mark progress, and what went wrong in words a user
can act on (no network, a full disk)."""

from __future__ import annotations

import re

#: pip's lines that mark a step forward (each moves the step's share of the bar on)
PIP_EVENT = re.compile(r"^(Collecting|Downloading|Installing collected packages|Building wheel|"
                       r"Successfully installed|Requirement already satisfied)\b")

#: pip's and the OS's words for "no network", and what the user is told instead
_NETWORK_WORDS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                  "Name or service not known", "Network is unreachable", "Connection refused",
                  "No route to host", "Max retries exceeded", "ConnectTimeoutError",
                  "Read timed out", "getaddrinfo failed", "ProxyError")


def is_disk_full(text: str) -> bool:
    """Whether ``text`` (an error, a command's output) says the disk is full."""
    return "No space left on device" in text or "[Errno 28]" in text \
        or "There is not enough space on the disk" in text


def diagnosis(lines: list[str]) -> str:
    """One sentence on what pip's output says went wrong ('' when it says nothing known)."""
    text = "\n".join(lines[-200:])
    if is_disk_full(text):
        return "The disk is full (No space left on device)."
    if any(w in text for w in _NETWORK_WORDS):
        return "The package index could not be reached: no network connection, or a proxy is needed."
    return ""
