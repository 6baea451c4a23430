"""The run's log through stdlib `logging`: the lines reproduce writes about its stages (reused, ran,
re-running and why, the figures it measured) go to the `fsaf_repro.reproduce` logger at INFO.

`RunLog(run_dir, echo)` gives that logger its handlers for one run: one that appends each line,
stamped in UTC, to `<run dir>/logs/reproduce.log`, and with `echo` one that prints it to stdout as
`reproduce: <line>` (the console output reproduce always had). A later RunLog replaces an earlier
one's handlers, so a process that runs several runs writes each run's lines to its own file only. The
logger propagates, so an application's own logging configuration, and pytest's `caplog`, see the lines
as well.
"""
import datetime
import logging
import os
import sys

from .fileio import naming_os_errors

LOGGER_NAME = "fsaf_repro.reproduce"
LOG_DIR = "logs"
LOG_FILE = "reproduce.log"
CONSOLE_PREFIX = "reproduce: "

logger = logging.getLogger(LOGGER_NAME)


class _RunFileHandler(logging.Handler):
    """Appends each record to the run's log file, opened per record (a killed run's log is whole up to
    its last line). A write error is raised, naming the file: logging's own file handler would print
    it and drop the line."""

    def __init__(self, path):
        super().__init__(logging.INFO)
        self.path = path

    def emit(self, record):
        stamp = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        line = f"{stamp.replace(tzinfo=None, microsecond=0).isoformat()}Z {record.getMessage()}\n"
        with naming_os_errors(self.path), open(self.path, "a") as handle:
            handle.write(line)


class _ConsoleHandler(logging.Handler):
    """`reproduce: <line>` on stdout as it is when the line is written (so that a redirected or
    captured stdout gets it)."""

    def __init__(self):
        super().__init__(logging.INFO)

    def emit(self, record):
        sys.stdout.write(CONSOLE_PREFIX + record.getMessage() + "\n")
        sys.stdout.flush()


class RunLog:
    """`log(message)`: one line of the run, to the `fsaf_repro.reproduce` logger (see the module doc)."""

    def __init__(self, run_dir: str, echo: bool = True):
        self.path = os.path.join(run_dir, LOG_DIR, LOG_FILE)
        with naming_os_errors(os.path.dirname(self.path)):
            if not os.path.isdir(os.path.dirname(self.path)):
                os.makedirs(os.path.dirname(self.path))
        for handler in [h for h in logger.handlers if isinstance(h, (_RunFileHandler, _ConsoleHandler))]:
            logger.removeHandler(handler)
        self.handlers = [_RunFileHandler(self.path)] + ([_ConsoleHandler()] if echo else [])
        for handler in self.handlers:
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)

    def __call__(self, message: str) -> None:
        logger.info(message)

    def close(self) -> None:
        """Detach this run's handlers (a later RunLog does it too)."""
        for handler in self.handlers:
            logger.removeHandler(handler)
