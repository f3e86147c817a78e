"""torchrun with a one-line failure report: `python -m sat.launch [torchrun options] script.py [args]`.

torch.distributed.run ends a failed job with a ChildFailedError traceback of about fifty lines after the workers
have printed their own errors. This wrapper runs the same launcher and turns that ending into one line naming the
failed rank and its exit status, and exits with the child's status (a signal ends with 128 + its number).
"""

from __future__ import annotations

import signal
import sys
import time

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

# Under torchrun every rank runs the up-front checks on the same files, so one rank per node reports a failure.
# The others exit with the same status after this delay: torchrun stops the remaining ranks when the first exits,
# and the reporting rank must not be stopped before it has printed.
QUIET_RANK_DELAY_S = 3.0


def leave_the_report_to_local_rank_0() -> None:
    """Called by a rank other than local rank 0 that hit the same up-front error: wait, silently, so that local
    rank 0 prints it once (a SIGTERM from torchrun now simply ends this process)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    time.sleep(QUIET_RANK_DELAY_S)


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
