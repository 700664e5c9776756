"""`python -m plexcdn` in a process of its own that runs many commands one after another, so that hundreds of
stack files go through the real entry point without paying Python's start-up for each.

Reads one JSON list of arguments a line on stdin and answers each with one JSON line: the exit status, what
the command wrote to stdout and stderr, and the traceback of any exception that escaped it. A command still
running after HANG_GUARD_SECONDS is stopped and answered as hung."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import sys
import traceback
from types import FrameType

from plexcdn.__main__ import main

HANG_GUARD_SECONDS = 5


class HungError(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise HungError


def run(argv: list[str]) -> dict[str, object]:
    stdout, stderr = io.StringIO(), io.StringIO()
    answer: dict[str, object] = {"status": None, "traceback": None, "hung": False}
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(HANG_GUARD_SECONDS)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            answer["status"] = main(argv)
    except HungError:
        answer["hung"] = True
    except SystemExit as exit_:
        answer["status"] = exit_.code
    except BaseException:  # any escape is the finding this driver reports
        answer["traceback"] = traceback.format_exc()
    finally:
        signal.alarm(0)
    answer["stdout"], answer["stderr"] = stdout.getvalue(), stderr.getvalue()
    return answer


def serve() -> None:
    for line in sys.stdin:
        sys.stdout.write(json.dumps(run(json.loads(line))) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
