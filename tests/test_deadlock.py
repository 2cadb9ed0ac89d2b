"""No deadlock, whatever the sizes and the order in which a child reads and writes.

A child that fills its stdout pipe while procflow is still writing its stdin
(or waits on stderr while procflow reads stdout) deadlocks a naive runner.
Every run here has a timeout, so a deadlock fails as ProcTimeout instead of hanging.
"""

from __future__ import annotations

import os

import pytest
from child import pattern_bytes
from conftest import child
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from procflow import Proc

KiB = 1 << 10
MiB = 1 << 20
BIG = 16 * MiB

#: Sizes around the pipe capacity (64 KiB) and the pumps' chunk sizes, up to 16 MiB.
BOUNDARIES = [0, 1, 4095, 4096, 65535, 65536, 65537, 131072, 1 * MiB - 1, 1 * MiB, 1 * MiB + 1, 4 * MiB, BIG]
sizes = st.one_of(st.sampled_from(BOUNDARIES), st.integers(min_value=0, max_value=BIG))

#: Steps of the `mix` child: r = read all stdin, o = write stdout, e = write stderr, i = interleave.
ORDERS = ["roe", "reo", "ore", "oer", "eor", "ero", "i", "oe", "eo", "o", "e", "r", ""]

#: One 16 MiB position-dependent pattern, sliced for every input.
PATTERN = pattern_bytes(BIG)

#: A deadlock shows up as a ProcTimeout after this many seconds, never as a hang.
RUN_TIMEOUT = 60


def run_mix(order: str, n_in: int, n_out: int, n_err: int, give_input: bool = True) -> None:
    """Run the `mix` child and check its output byte-exact."""
    p = child("mix", order or "-", n_in, n_out, n_err).stdout_capture().stderr_capture().timeout(RUN_TIMEOUT)
    if give_input:
        p = p.input(memoryview(PATTERN)[:n_in])
    r = p.run()
    expected_read = n_in if ("r" in order or "i" in order) else 0
    expected_out = n_out if ("o" in order or "i" in order) else 0
    expected_err = n_err if ("e" in order or "i" in order) else 0
    assert len(r.stdout) == expected_out
    assert r.stdout == b"o" * expected_out
    tail = f"\nread={expected_read}\n".encode()
    assert len(r.stderr) == expected_err + len(tail)
    assert r.stderr == b"e" * expected_err + tail


class TestMatrix:
    """Hypothesis explores sizes and orders."""

    @settings(
        max_examples=250,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(order=st.sampled_from(ORDERS), n_in=sizes, n_out=sizes, n_err=sizes, give_input=st.booleans())
    def test_mix(self, order: str, n_in: int, n_out: int, n_err: int, give_input: bool) -> None:
        """Any sizes 0..16 MiB in any read/write order finish with byte-exact stdout and stderr."""
        if not give_input:
            n_in = 0  # stdin is /dev/null: the child reads nothing
        run_mix(order, n_in, n_out, n_err, give_input)

    @settings(
        max_examples=80,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(n=sizes, n_err=sizes)
    def test_cat_pattern(self, n: int, n_err: int) -> None:
        """Input fed through cat comes back byte-for-byte (order and content), with stderr captured alongside."""
        code = (
            "import os, sys\n"
            f"sys.stderr.buffer.write(b'e' * {n_err}); sys.stderr.flush()\n"
            "while True:\n"
            "    d = os.read(0, 1 << 16)\n"
            "    if not d: break\n"
            "    sys.stdout.buffer.write(d)\n"
        )
        p = Proc(child("cat").argv[0], "-c", code).input(memoryview(PATTERN)[:n])
        r = p.stdout_capture().stderr_capture().timeout(RUN_TIMEOUT).run()
        assert len(r.stdout) == n
        assert r.stdout == PATTERN[:n]
        assert r.stderr == b"e" * n_err


class TestWorstCases:
    """The explicit worst cases, each with 16 MiB on every stream."""

    @pytest.mark.parametrize("order", ["oer", "eor", "roe", "i", "oe"])
    def test_sixteen_mib_everywhere(self, order: str) -> None:
        """16 MiB in, 16 MiB out, 16 MiB err, in the given order (oer/eor: everything written before reading)."""
        run_mix(order, BIG, BIG, BIG)

    def test_writes_everything_before_reading(self) -> None:
        """A child that writes 16 MiB to both streams before reading 16 MiB of input."""
        run_mix("oer", BIG, BIG, BIG)

    def test_stderr_only_before_reading(self) -> None:
        """Stderr filled first while stdin is still being fed and stdout is empty."""
        run_mix("er", BIG, 0, BIG)

    def test_random_bytes_through_cat(self) -> None:
        """16 MiB of random bytes round-trip through cat, byte-exact."""
        data = os.urandom(BIG)
        r = child("cat").input(data).stdout_capture().stderr_capture().timeout(RUN_TIMEOUT).run()
        assert r.stdout == data
        assert r.stderr == b""

    def test_text_mode_big(self) -> None:
        """16 MiB of multibyte text in and out in text mode: nothing mangled at chunk borders."""
        text = "aé€😀" * (BIG // 10)
        r = child("cat").input(text).text().stdout_capture().timeout(RUN_TIMEOUT).run()
        assert r.stdout == text

    def test_real_tool(self) -> None:
        """A real tool (wc -c) reading 16 MiB while stderr is captured too."""
        r = Proc("wc", "-c").input(PATTERN).stdout_capture().stderr_capture().timeout(RUN_TIMEOUT).run()
        assert r.stdout.strip() == str(BIG).encode()
