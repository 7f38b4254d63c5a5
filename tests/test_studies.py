"""The studies registry, `studies.run` (outputs, refusal to overwrite) and `dlnode study` on the command line."""

import pytest
import xarray as xr
from typer.testing import CliRunner

import studies
from dlnode import cli


def test_registry_names_the_studies_and_loads_lazily():
    assert studies.STUDIES == (
        "saxe2014", "gidel2019", "arora2019", "cao2022", "cmv2023", "marion_chizat2024", "cohen2021", "haochen2021",
        "blanc2020", "woodworth2020",
    )  # fmt: skip
    module = studies.load("arora2019")
    assert module.NAME == "arora2019" and "1905.13655" in module.PAPER
    for key in ("QUICK", "FULL"):
        assert isinstance(getattr(module, key), dict)
    with pytest.raises(ValueError, match="unknown study 'nope'; expected one of"):
        studies.load("nope")


def test_format_table_lists_claims_and_counts_passes():
    rows = [{"claim": "a", "paper": "p", "ours": "1.0", "passed": True},
            {"claim": "bb", "paper": "q", "ours": "2.0", "passed": False}]  # fmt: skip
    text = studies.format_table(rows, runtime=1.5)
    lines = text.splitlines()
    assert lines[0].split() == ["claim", "paper", "ours", "check"]
    assert lines[2].split()[-1] == "pass" and lines[3].split()[-1] == "FAIL"
    assert lines[-1] == "1/2 checks passed; runtime 1.5 s"


def test_run_refuses_to_overwrite_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "arora2019.nc").write_bytes(b"earlier result")
    module = studies.load("arora2019")
    monkeypatch.setattr(module, "compute", lambda config: pytest.fail("compute ran although output exists"))
    with pytest.raises(ValueError, match="already holds results of study 'arora2019'.*overwrite=True"):
        studies.run("arora2019", quick=True, outdir=tmp_path)
    assert (tmp_path / "data" / "arora2019.nc").read_bytes() == b"earlier result"


def test_study_command_lists_and_rejects_unknown_names():
    runner = CliRunner()
    listed = runner.invoke(cli.app, ["study", "--list"])
    assert listed.exit_code == 0, listed.output
    assert "arora2019" in listed.output and "marion_chizat2024" in listed.output
    bad = runner.invoke(cli.app, ["study", "nope"])
    assert bad.exit_code == 2 and "NAME must be one of" in bad.output
    missing = runner.invoke(cli.app, ["study"])
    assert missing.exit_code == 2 and "NAME is required" in missing.output


def test_study_command_prints_the_table_and_exits_1_on_a_failed_check(tmp_path, monkeypatch):
    rows = [{"claim": "deeper is lower", "paper": "yes", "ours": "2.9 vs 19", "passed": True},
            {"claim": "depth 2 recovers", "paper": "yes", "ours": "error 0.02", "passed": False}]  # fmt: skip

    def fake_run(name, quick, outdir, overwrite, config):
        assert (name, quick, outdir, overwrite, config) == ("arora2019", True, tmp_path, False, None)
        ds = xr.Dataset(attrs={"study_compute_time": 10.0, "study_check_time": 1.5})
        return ds, rows, [tmp_path / "figures" / "arora2019-spectra.png"], 12.5

    monkeypatch.setattr(studies, "run", fake_run)
    result = CliRunner().invoke(cli.app, ["study", "arora2019", "--quick", "-o", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "depth 2 recovers" in result.output and "FAIL" in result.output
    assert "1/2 checks passed; runtime 12.5 s (compute 10.0 s, check 1.5 s, figures and file 1.0 s)" in result.output
    rows[1]["passed"] = True
    assert CliRunner().invoke(cli.app, ["study", "arora2019", "--quick", "-o", str(tmp_path)]).exit_code == 0
