"""Running the command line in-process, and filling a buffer for it to show."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dramatiq_mollifier.buffer import MollifierBuffer
from dramatiq_mollifier.buffer.drain_protocol import DrainProtocol
from dramatiq_mollifier.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> CliResult:
    """``dramatiq-mollifier *argv`` in this process: its exit code, stdout and stderr."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def dead_letter(buffer: MollifierBuffer, message_id: str, org_id: str, env_id: str) -> None:
    """Accept an entry, pop it and fail it, as a drainer that gave up would."""
    assert buffer.accept(message_id, org_id=org_id, env_id=env_id, payload=b"payload")
    popped = DrainProtocol(buffer).pop(org_id, env_id)
    assert popped is not None and popped.message_id == message_id
    assert DrainProtocol(buffer).fail(message_id, code="ConnectionError", message="broker said no")
