"""The run's log (fsaf_repro.runlog): stdlib logging, one file handler per run writing its logs/, the
console line as reproduce always printed it, and the lines visible to logging's own consumers."""
import logging
import os
import re

import pytest

from fsaf_repro import runlog

pytestmark = pytest.mark.unit


def _file_lines(run_dir):
    with open(os.path.join(str(run_dir), "logs", "reproduce.log")) as handle:
        return handle.read().splitlines()


def test_a_line_goes_to_the_run_file_the_console_and_the_logger(tmp_path, capsys, caplog):
    log = runlog.RunLog(str(tmp_path / "run"), echo=True)
    with caplog.at_level(logging.INFO, logger=runlog.LOGGER_NAME):
        log("ran: export (key 0123456789ab, 1.0 s) at 100%")
    (line,) = _file_lines(tmp_path / "run")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ran: export \(key 0123456789ab, 1\.0 s\) at 100%$", line)
    assert capsys.readouterr().out == "reproduce: ran: export (key 0123456789ab, 1.0 s) at 100%\n"
    assert [r.getMessage() for r in caplog.records] == ["ran: export (key 0123456789ab, 1.0 s) at 100%"]
    log.close()


def test_a_second_run_takes_the_handlers_so_each_run_file_has_its_own_lines(tmp_path, capsys):
    first = runlog.RunLog(str(tmp_path / "a"), echo=False)
    first("line of a")
    second = runlog.RunLog(str(tmp_path / "b"), echo=False)
    second("line of b")
    assert [line.split(" ", 1)[1] for line in _file_lines(tmp_path / "a")] == ["line of a"]
    assert [line.split(" ", 1)[1] for line in _file_lines(tmp_path / "b")] == ["line of b"]
    assert capsys.readouterr().out == ""  # echo off: nothing on the console
    assert sum(isinstance(h, logging.Handler) and h in second.handlers for h in runlog.logger.handlers) == 1
    second.close()
    assert not [h for h in runlog.logger.handlers if h in first.handlers + second.handlers]


def test_a_log_file_that_cannot_be_written_is_an_error_naming_it(tmp_path):
    log = runlog.RunLog(str(tmp_path / "run"), echo=False)
    os.makedirs(log.path + ".d")
    os.rename(log.path + ".d", log.path)  # a folder where the file belongs
    with pytest.raises(OSError) as failed:
        log("lost?")
    assert failed.value.filename == log.path
    log.close()
