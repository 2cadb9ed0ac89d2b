#!/usr/bin/env python3
"""Generate raw RGB frames in Python and encode them with ffmpeg through ``writer()``.

    python recipes/encode_video.py [--width 640] [--height 360] [--fps 30] [--frames 150]
                                   [--encoder auto|libx264|mpeg4] [--output out.mp4]

Each frame (a scrolling colour gradient with a moving bar, ``width*height*3``
bytes of ``rgb24``) is made in Python and written to ffmpeg's stdin with
``Proc.writer()``; ffmpeg reads ``-f rawvideo -pix_fmt rgb24 -s WxH -r FPS -i -``
and encodes with libx264 when this ffmpeg has it, else mpeg4 (``ffmpeg
-encoders`` is asked). ffmpeg reports its progress on stderr
(``-progress pipe:2``: ``frame=N`` ... ``progress=continue|end`` blocks); an
``on_stderr`` callback parses those lines on procflow's drain thread while the
main thread is busy writing frames. At the end ``ffprobe`` counts the frames
of the file and reads its size and codec. Exits 0 when they are what was
asked, 1 otherwise.

What it shows:

* ``writer()`` for feeding an encoder from Python: ``write()`` blocks while
  ffmpeg is busy (one frame in flight, flat memory) and never deadlocks,
  because ffmpeg's stderr is drained (and parsed) meanwhile;
* ``on_stderr`` per line, teed with a bounded ``stderr_capture`` so that a
  failing ffmpeg raises ``ExitError`` with its own error message;
* ``read()`` for short commands (``ffmpeg -encoders``, ``ffprobe ... -of json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from procflow import Proc, ProcError

Progress = Callable[[str], object]


def pick_encoder(wanted: str = "auto") -> str:
    """libx264 if this ffmpeg has it (or ``wanted`` if given and present), else mpeg4."""
    listing = Proc("ffmpeg", "-hide_banner", "-encoders").stderr_null().read()
    names = {parts[1] for line in listing.splitlines() if len(parts := line.split()) >= 2 and parts[0].startswith("V")}
    if wanted != "auto":
        if wanted not in names:
            raise SystemExit(f"this ffmpeg has no {wanted!r} encoder (video encoders: {len(names)})")
        return wanted
    for name in ("libx264", "mpeg4"):
        if name in names:
            return name
    raise SystemExit("this ffmpeg has neither libx264 nor mpeg4")


def frames(width: int, height: int, count: int) -> Iterator[bytes]:
    """``count`` rgb24 frames: a horizontal gradient scrolling left, a white bar moving down."""
    base = bytearray()
    for x in range(width):
        base += bytes(((x * 255) // max(1, width - 1), (x * 97) % 256, 255 - (x * 255) // max(1, width - 1)))
    base_row = bytes(base) * 2
    white = b"\xff" * (width * 3)
    bar = max(2, height // 12)
    for i in range(count):
        shift = (i * 4 % width) * 3
        row = base_row[shift : shift + width * 3]
        top = (i * 3) % max(1, height - bar)
        yield row * top + white * bar + row * (height - top - bar)


class FfmpegProgress:
    """Parses ``-progress pipe:2`` blocks (key=value lines, ending with ``progress=...``)."""

    def __init__(self, report: Progress, total: int) -> None:
        self.report = report
        self.total = total
        self.current: dict[str, str] = {}
        self.frame = 0
        self.blocks = 0
        self.ended = False
        self.other: list[str] = []  # anything that is not a progress line (warnings, errors)
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:  # runs on procflow's drain thread
        key, sep, value = line.partition("=")
        if not sep or not key or " " in key:
            if line.strip():
                self.other.append(line)
            return
        self.current[key] = value.strip()
        if key == "progress":
            with self._lock:
                self.blocks += 1
                self.frame = int(self.current.get("frame", "0") or 0)
                self.ended = value.strip() == "end"
            speed = self.current.get("speed", "N/A").strip()
            self.report(f"ffmpeg: frame {self.frame}/{self.total}  fps {self.current.get('fps', '?')}  "
                        f"size {self.current.get('total_size', '?')} B  speed {speed}"
                        + ("  (end)" if self.ended else ""))


def encode(
    output: str,
    width: int,
    height: int,
    fps: int,
    count: int,
    encoder: str,
    *,
    progress: Progress = print,
) -> FfmpegProgress:
    """Encode ``count`` generated frames into ``output``; returns the parsed progress."""
    parser = FfmpegProgress(progress, count)
    argv: list[Any] = [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostats",
        "-progress", "pipe:2", "-stats_period", "0.25",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
        "-c:v", encoder, "-pix_fmt", "yuv420p",
    ]
    if encoder == "libx264":
        argv += ["-preset", "veryfast"]
    else:
        argv += ["-q:v", "4"]
    argv += ["-y", output]
    proc = Proc(*argv).on_stderr(parser).stderr_capture(max_bytes=1 << 20)
    started = time.monotonic()
    with proc.writer() as w:  # leaving the block sends EOF and waits; ExitError if ffmpeg fails
        for frame in frames(width, height, count):
            w.write(frame)
    elapsed = time.monotonic() - started
    progress(f"encoded {count} frames ({count * width * height * 3 / (1 << 20):.1f} MiB raw) in {elapsed:.2f} s")
    return parser


def probe(path: str) -> dict[str, Any]:
    """ffprobe's view of the first video stream: codec_name, width, height, nb_read_frames."""
    out = Proc(
        "ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
        "-show_entries", "stream=codec_name,width,height,nb_read_frames,pix_fmt", "-of", "json", path,
    ).stderr_capture().read()
    streams = json.loads(out).get("streams") or [{}]
    return dict(streams[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--encoder", default="auto", help="auto (libx264, else mpeg4), or an encoder name")
    parser.add_argument("--output", help="video file to write (default: a temporary .mp4)")
    args = parser.parse_args(argv)
    if args.width % 2 or args.height % 2 or args.width <= 0 or args.height <= 0:
        parser.error("--width and --height must be positive and even (yuv420p)")
    if args.frames <= 0 or args.fps <= 0:
        parser.error("--frames and --fps must be positive")

    encoder = pick_encoder(args.encoder)
    codec_name = {"libx264": "h264", "mpeg4": "mpeg4"}.get(encoder)
    with tempfile.TemporaryDirectory(prefix="procflow-video-") as work:
        output = args.output or os.path.join(work, "out.mp4")
        print(f"encoding {args.frames} frames of {args.width}x{args.height} at {args.fps} fps "
              f"with {encoder} into {output}")
        try:
            parsed = encode(output, args.width, args.height, args.fps, args.frames, encoder)
            info = probe(output)
        except (ProcError, OSError) as e:
            print(f"failed: {e}", file=sys.stderr)
            return 1
        size = os.path.getsize(output)
    print(f"ffprobe: {info} ({size} bytes)")
    problems = []
    if parsed.blocks == 0 or not parsed.ended:
        problems.append(f"ffmpeg's progress was not parsed (blocks={parsed.blocks}, ended={parsed.ended})")
    elif parsed.frame != args.frames:
        problems.append(f"ffmpeg reported {parsed.frame} frames, expected {args.frames}")
    if int(info.get("nb_read_frames", -1)) != args.frames:
        problems.append(f"ffprobe counted {info.get('nb_read_frames')} frames, expected {args.frames}")
    if (info.get("width"), info.get("height")) != (args.width, args.height):
        problems.append(f"size {info.get('width')}x{info.get('height')}, expected {args.width}x{args.height}")
    if codec_name is not None and info.get("codec_name") != codec_name:
        problems.append(f"codec {info.get('codec_name')!r}, expected {codec_name!r}")
    for p in problems:
        print(f"MISMATCH: {p}", file=sys.stderr)
    if not problems:
        print(f"OK: {args.frames} frames, {args.width}x{args.height}, {info.get('codec_name')}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
