"""Property: whatever event reaches the allow-list, no withheld value and no address gets out."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.trial.unittest import TestCase

from ..logs import ALLOWED, KEPT_META, OWN, TWISTED, sanitize
from . import properties

properties.load()

# Text that cannot spell an address or a canary by accident: letters without a-f, spaces, braces.
SAFE = st.text(alphabet="ghijklmnopqrstuvwxyz {}!.[]()", max_size=20)
ADDRESS = st.ip_addresses().map(str).filter(lambda a: len(a) > 3)  # "::" and "::1"-like are too short to search for
LEGACY = ["message", "log_text", "system", "why", "isError", "log_legacy", "format", "log_io", "log_source", "peer"]
META = ["log_time", "log_level", "log_namespace", "log_failure", "failure", "log_logger", "log_trace"]
NAMES = st.sampled_from(sorted(OWN | TWISTED) + LEGACY + META) | st.text(max_size=12)


@st.composite
def events(draw: Any) -> tuple[dict[str, Any], list[str]]:
    """An event whose non-allowed values and whose log_system carry canaries and addresses."""
    addresses = draw(st.lists(ADDRESS, min_size=1, max_size=3))
    secrets = [f"CANARY{i}Q" for i in range(3)] + addresses
    secret = st.sampled_from(secrets)
    # Formats, namespaces and Twisted's values are written by programmers; the address is
    # what Twisted may have put in.
    address = st.sampled_from(addresses)
    event: dict[str, Any] = {}
    for name in draw(st.lists(NAMES, max_size=8)):
        if name in OWN:
            event[name] = draw(SAFE)  # privllm's own fields are written by privllm: trusted
        elif name in TWISTED or name == "log_namespace":
            event[name] = draw(SAFE | address | st.integers())  # Twisted's: trusted, but for an address
        elif name == "log_time":
            event[name] = draw(secret | st.floats() | st.integers())
        else:
            event[name] = draw(secret | st.tuples(secret) | st.integers())
    event["log_system"] = draw(st.sampled_from(["HTTPChannel,3,{}", "{}", "x (TLS),1,[{}]"])).format(draw(secret))
    event.setdefault("log_level", draw(st.sampled_from(list(LogLevel.iterconstants()))))
    event.setdefault("log_namespace", draw(SAFE | address))
    pieces = st.lists(SAFE | address | NAMES.map(lambda n: "{" + n + "}") | st.just("{factory.transport}"), max_size=6)
    event["log_format"] = "".join(draw(pieces))
    return event, secrets


class Sanitizer(TestCase):
    @given(events())
    def test_nothing_withheld_gets_out(self, drawn: tuple[dict[str, Any], list[str]]) -> None:
        event, secrets = drawn
        sanitize(event)
        self.assertLessEqual(set(event), ALLOWED | KEPT_META)
        line = formatEventAsClassicLogText(event) or ""  # None for an empty message
        for secret in secrets:
            self.assertNotIn(secret, line)
