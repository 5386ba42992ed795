"""The generated admin token: made once, the same for every process that starts at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from stockkeeper.api.auth import TOKEN_FILE, generated_admin_token
from stockkeeper.config import ConfigError


def test_processes_starting_together_agree_on_one_token(tmp_path: Path) -> None:
    for round_ in range(20):
        data = tmp_path / f"data-{round_}"
        gate = threading.Barrier(8)

        def start(gate: threading.Barrier = gate, data: Path = data) -> str:
            gate.wait()
            return generated_admin_token(data)

        with ThreadPoolExecutor(8) as pool:
            tokens = list(pool.map(lambda _: start(), range(8)))
        assert len(set(tokens)) == 1
        assert (data / TOKEN_FILE).read_text().strip() == tokens[0]
        assert [p.name for p in data.iterdir()] == [TOKEN_FILE]  # no drafts left behind


def test_the_token_is_kept_private_and_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = generated_admin_token(tmp_path)
    assert first in capsys.readouterr().err  # printed once, when made
    assert generated_admin_token(tmp_path) == first
    assert capsys.readouterr().err == ""
    assert (tmp_path / TOKEN_FILE).stat().st_mode & 0o777 == 0o600


def test_a_data_dir_that_cannot_hold_the_token_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    data = tmp_path / "a-file" / "data"
    with pytest.raises(ConfigError) as info:
        generated_admin_token(data)
    assert f"data_dir ({data})" in str(info.value)
    assert "api.tokens" in str(info.value)
