"""benchmarks/noise_peer.py: its refusals (before any work) and its reading of their script's log."""

from __future__ import annotations

import pytest

from benchmarks import noise_peer

# two lines as their script prints them (format "iter: {:3d} | train error: {:4.6f} | test error: {:4.6f} | ")
THEIR_LOG = """iter: 1960 | train error: 0.000080 | test error: 74.716500 | 
iter: 1980 | train error: 0.000078 | test error: 74.716080 | 
"""


@pytest.mark.parametrize("argv", [[], ["--theirs", "{tmp}"], ["--theirs", "{tmp}/missing"]])
def test_refuses_without_their_script(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        noise_peer.main([a.format(tmp=tmp_path) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("--theirs must be") and "pass --theirs" in err


def test_refuses_too_few_repeats(tmp_path, capsys):
    (tmp_path / noise_peer.SCRIPT).write_text("")
    with pytest.raises(SystemExit) as exc:
        noise_peer.main(["--theirs", str(tmp_path), "--repeats", "2"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().startswith("--repeats must be at least 3")


def test_finds_their_script_by_folder_or_file(tmp_path):
    script = tmp_path / noise_peer.SCRIPT
    script.write_text("")
    assert noise_peer.their_script(str(tmp_path)) == script.resolve()
    assert noise_peer.their_script(str(script)) == script.resolve()
    assert noise_peer.their_script(str(tmp_path / "other.py")) is None


def test_reads_their_log_and_counts_agreeing_digits():
    assert noise_peer.parse_log(THEIR_LOG) == {1960: 74.7165, 1980: 74.71608}
    assert noise_peer.printed_digits("74.716080", 74.71608049) == 8  # every printed digit, the trailing 0 too
    assert noise_peer.printed_digits("74.716080", 74.7172) == 4  # 74.72 against 74.72, not 74.717 / 74.716
    assert noise_peer.printed_digits("0.039565", 0.0395) == 2
