"""The chatty agent: prints exactly MIB MiB of 100-byte lines, the last of them the promise.

Usage: _flood.py [MIB]. Writes 1 MB blocks straight to fd 1 so that the writer is never what limits
the throughput being measured.
"""

import os
import sys

LINE = 100
PROMISE = b"<promise>COMPLETE</promise>".ljust(LINE - 1, b".") + b"\n"


def main() -> None:
    total_lines = int(sys.argv[1] if len(sys.argv) > 1 else 400) * 1024 * 1024 // LINE
    body = b"".join(b"%08d " % i + b"x" * (LINE - 10) + b"\n" for i in range(10_000))  # 1,000,000 bytes
    left = total_lines - 1
    while left:
        n = min(left, 10_000)
        view = memoryview(body)[: n * LINE]
        while view:
            view = view[os.write(1, view):]
        left -= n
    os.write(1, PROMISE)


if __name__ == "__main__":
    sys.exit(main())
