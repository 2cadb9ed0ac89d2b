"""Named child behaviours for the tests, run as ``python child.py NAME [ARGS...]``.

Each behaviour is a small, deterministic program. Tests synchronize on what a
child prints (``ready``), never on sleeping.
"""

from __future__ import annotations

import os
import signal
import sys
import time

OUT = sys.stdout.buffer
ERR = sys.stderr.buffer


def cat() -> None:
    """Copy stdin to stdout in large chunks."""
    while True:
        data = os.read(0, 1 << 16)
        if not data:
            return
        OUT.write(data)
        OUT.flush()


def echo(*args: str) -> None:
    OUT.write((" ".join(args) + "\n").encode())


def write(stream: str, n: str, byte: str = "x") -> None:
    """Write N bytes (of the given byte) to stdout or stderr."""
    out = OUT if stream == "stdout" else ERR
    left = int(n)
    block = byte.encode() * min(left, 1 << 16) if left else b""
    while left > 0:
        chunk = block[:left]
        out.write(chunk)
        left -= len(chunk)
    out.flush()


def pattern(stream: str, n: str) -> None:
    """Write N bytes of a position-dependent pattern (so reordering or loss is detectable)."""
    out = OUT if stream == "stdout" else ERR
    total = int(n)
    out.write(pattern_bytes(total))
    out.flush()


def pattern_bytes(total: int) -> bytes:
    unit = bytes(range(256)) * 256  # 64 KiB
    reps = total // len(unit) + 1
    return (unit * reps)[:total]


def mix(order: str, n_in: str, n_out: str, n_err: str) -> None:
    """Read N_IN bytes of stdin and write N_OUT/N_ERR bytes, in ORDER.

    ORDER is a string of steps: 'r' read all stdin, 'o' write stdout, 'e' write
    stderr, 'i' interleave stdout/stderr writes while reading.
    """
    want_in, want_out, want_err = int(n_in), int(n_out), int(n_err)
    got = 0
    if "i" in order:
        out_left, err_left = want_out, want_err
        while True:
            data = os.read(0, 1 << 16) if got < want_in else b""
            got += len(data)
            if out_left:
                k = min(out_left, 1 << 15)
                OUT.write(b"o" * k)
                OUT.flush()
                out_left -= k
            if err_left:
                k = min(err_left, 1 << 15)
                ERR.write(b"e" * k)
                ERR.flush()
                err_left -= k
            if not data and not out_left and not err_left:
                break
    else:
        for step in order:
            if step == "r":
                while True:
                    data = os.read(0, 1 << 16)
                    if not data:
                        break
                    got += len(data)
            elif step == "o":
                write("stdout", str(want_out), "o")
            elif step == "e":
                write("stderr", str(want_err), "e")
    OUT.flush()
    ERR.write(f"\nread={got}\n".encode())
    ERR.flush()


def exit_(code: str) -> None:
    sys.exit(int(code))


def sleep_forever() -> None:
    OUT.write(b"ready\n")
    OUT.flush()
    while True:
        time.sleep(3600)


def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    OUT.write(b"ready\n")
    OUT.flush()
    while True:
        time.sleep(3600)


def grandchild(mode: str = "hold") -> None:
    """Spawn a grandchild that sleeps forever holding our stdout, print its pid, then:
    'hold' wait forever; 'exit' exit at once (the grandchild keeps the pipe);
    'setsid' the grandchild calls setsid first."""
    import subprocess

    kw: dict[str, object] = {}
    if mode == "setsid":
        kw["start_new_session"] = True
    p = subprocess.Popen([sys.executable, __file__, "sleep_forever_quiet"], **kw)  # type: ignore[call-overload]
    OUT.write(f"grandchild {p.pid}\n".encode())
    OUT.flush()
    if mode in ("exit", "setsid"):
        os._exit(0)
    while True:
        time.sleep(3600)


def sleep_forever_quiet() -> None:
    while True:
        time.sleep(3600)


def stderr_lines(n: str, code: str = "0") -> None:
    for i in range(int(n)):
        ERR.write(f"err line {i}\n".encode())
    ERR.flush()
    sys.exit(int(code))


def read_line_then_exit(code: str = "0") -> None:
    """Read one line of stdin, echo it, exit (leaving the rest unread)."""
    line = sys.stdin.buffer.readline()
    OUT.write(line)
    OUT.flush()
    sys.exit(int(code))


def env(*names: str) -> None:
    for n in names:
        OUT.write(f"{n}={os.environ.get(n, '<unset>')}\n".encode())


def fds() -> None:
    """Print the open fds of this process."""
    OUT.write((" ".join(sorted(os.listdir("/proc/self/fd"), key=int)) + "\n").encode())


def pwd() -> None:
    OUT.write((os.getcwd() + "\n").encode())


def pgid() -> None:
    OUT.write(f"{os.getpid()} {os.getpgid(0)} {os.getppid()}\n".encode())


def kill_self(sig: str) -> None:
    os.kill(os.getpid(), int(sig))
    time.sleep(5)


BEHAVIOURS = {
    "cat": cat,
    "echo": echo,
    "write": write,
    "pattern": pattern,
    "mix": mix,
    "exit": exit_,
    "sleep_forever": sleep_forever,
    "sleep_forever_quiet": sleep_forever_quiet,
    "ignore_sigterm": ignore_sigterm,
    "grandchild": grandchild,
    "stderr_lines": stderr_lines,
    "read_line_then_exit": read_line_then_exit,
    "env": env,
    "fds": fds,
    "pwd": pwd,
    "pgid": pgid,
    "kill_self": kill_self,
}


# -- behaviours for the core engine tests (test_run / test_errors) ------------------


def split_utf8(n: str) -> None:
    """Write N multibyte characters, each split across two flushed writes (a pause between)."""
    chars = "é€😀"
    for i in range(int(n)):
        data = chars[i % len(chars)].encode()
        half = len(data) // 2 or 1
        OUT.write(data[:half])
        OUT.flush()
        time.sleep(0.002)
        OUT.write(data[half:])
        OUT.flush()
    OUT.write(b"\n")


def burn_cpu(seconds: str) -> None:
    """Spin until this process has used SECONDS of CPU time."""
    end = float(seconds)
    x = 0
    while time.process_time() < end:
        x += 1
    OUT.write(b"burnt\n")


def alloc(mib: str) -> None:
    """Allocate and touch MIB mebibytes, then exit."""
    block = b"x" * (int(mib) << 20)
    OUT.write(f"{len(block)}\n".encode())


def open_fds() -> None:
    """Print the fds open in this process (the fd used to list them excluded)."""
    listed = sorted(int(f) for f in os.listdir("/proc/self/fd"))
    still = []
    for fd in listed:
        try:
            os.fstat(fd)
        except OSError:
            continue
        still.append(str(fd))
    OUT.write((" ".join(still) + "\n").encode())


def read_all() -> None:
    """Read stdin to EOF and print how many bytes came."""
    n = 0
    while True:
        data = os.read(0, 1 << 16)
        if not data:
            break
        n += len(data)
    OUT.write(f"read={n}\n".encode())


BEHAVIOURS.update(
    {
        "split_utf8": split_utf8,
        "burn_cpu": burn_cpu,
        "alloc": alloc,
        "open_fds": open_fds,
        "read_all": read_all,
    }
)

# -- behaviours for the streaming tests (test_streaming) ------------------------------


def _pipe_unread(fd: int) -> int:
    import fcntl
    import struct
    import termios

    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def drained_writes(stream: str, *hex_pieces: str) -> None:
    """Write each hex-encoded piece, then wait until the reader has emptied the pipe.

    So each piece arrives in a read of its own: a character or a \\r\\n split
    between pieces is split between the parent's reads, deterministically.
    """
    out, fd = (OUT, 1) if stream == "stdout" else (ERR, 2)
    for piece in hex_pieces:
        out.write(bytes.fromhex(piece))
        out.flush()
        end = time.monotonic() + 30
        while _pipe_unread(fd) and time.monotonic() < end:
            time.sleep(0.001)


def ready_echo(code: str = "0") -> None:
    """Print ``ready``, then echo each stdin line (flushed) until EOF, then exit CODE."""
    OUT.write(b"ready\n")
    OUT.flush()
    for line in sys.stdin.buffer:
        OUT.write(line)
        OUT.flush()
    sys.exit(int(code))


def gate_then_count(gate_fd: str) -> None:
    """Wait for one byte on fd GATE_FD, then read stdin to EOF and print the byte count."""
    os.read(int(gate_fd), 1)
    n = 0
    while True:
        data = os.read(0, 1 << 16)
        if not data:
            break
        n += len(data)
    OUT.write(f"{n}\n".encode())


def lines_forever(prefix: str = "line") -> None:
    """Print numbered lines forever (until killed or the pipe breaks)."""
    i = 0
    while True:
        OUT.write(f"{prefix} {i}\n".encode())
        i += 1
        if i % 100 == 0:
            OUT.flush()


BEHAVIOURS.update(
    {
        "drained_writes": drained_writes,
        "ready_echo": ready_echo,
        "gate_then_count": gate_then_count,
        "lines_forever": lines_forever,
    }
)

if __name__ == "__main__":
    BEHAVIOURS[sys.argv[1]](*sys.argv[2:])  # type: ignore[operator]
    OUT.flush()
