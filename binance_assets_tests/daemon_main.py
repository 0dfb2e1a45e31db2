"""`dagster-daemon`, with its backfill loop every BACKFILL_INTERVAL_SECONDS instead of Dagster's 30.

Dagster hard-codes the pause between two iterations of the backfill daemon (`dagster._daemon.controller`
``DEFAULT_DAEMON_INTERVAL_SECONDS``, read at each pause). A backfill waits one pause to be picked up and one
more to be seen done, so at 30 s the daemon tests spent most of their minutes asleep. The daemon is
otherwise the real one, started as `dagster-daemon run` starts it (helpers.daemon).
"""

import sys

import dagster._daemon.controller as controller
from dagster._daemon.cli import main

BACKFILL_INTERVAL_SECONDS = 5

if __name__ == "__main__":
    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = BACKFILL_INTERVAL_SECONDS
    sys.exit(main())
