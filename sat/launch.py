"""torchrun with a one-line failure report: `python -m sat.launch [torchrun options] script.py [args]`.

torch.distributed.run ends a failed job with a ChildFailedError traceback of about fifty lines after the workers
have printed their own errors. This wrapper runs the same launcher and turns that ending into one line naming the
failed rank and its exit status, and exits with the child's status (a signal ends with 128 + its number).
"""

from __future__ import annotations

import signal
import sys

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError


def main(argv: list[str] | None = None) -> int:
    try:
        torchrun.main(argv)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode
        if code < 0:  # killed by a signal
            reason, code = f"was stopped by {signal.Signals(-code).name}", 128 - code
        else:
            reason = f"exited with status {code}"
        others = len(err.failures) - 1
        print(
            f"launch: rank {rank} {reason}{f' ({others} other rank(s) stopped too)' if others else ''}; "
            "its messages are above",
            file=sys.stderr,
        )
        return code or 1
    except SignalException as err:  # the launcher itself was interrupted; the workers were stopped
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
