"""The `stf` command line: every job is a row of one table, user errors are one line (exit 2, or 1
for a job that ran and failed), and anything else keeps its traceback."""

import subprocess
import sys
import types

import pytest

from pipelines import cli, jobs
from pipelines.errors import InputError, JobFailed, SpecError, UserError
from pipelines.spec import JobSpec


def test_every_job_is_a_verb_with_its_help_line_and_its_spec(capsys):
    """What a user sees: `stf --help` lists every job with its help line, and `stf spec JOB`
    prints every key of the job's spec."""
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    listing = " ".join(capsys.readouterr().out.split())  # argparse wraps the help lines
    assert done.value.code == 0
    for name, job in jobs.JOBS.items():
        assert f"{name} {job.help}" in listing, name
        assert cli.main(["spec", name]) == 0
        reference = capsys.readouterr().out
        for key in jobs.spec_class(name).model_fields:
            assert f"\n{key}:" in reference or f"\n# {key}:" in reference, (name, key)


class FakeSpec(JobSpec):
    """A job for these tests."""

    value: int = 0


@pytest.fixture
def fake_job(monkeypatch):
    """A `fake` job whose run raises what the test puts in `raises`."""
    state: dict = {"raises": None}

    def run(spec):
        if state["raises"] is not None:
            raise state["raises"]
        return spec.value

    runner = types.ModuleType("fake_runner")
    runner.run = run
    runner.summary_line = lambda spec, result: f"fake: {result}"
    runner.FakeSpec = FakeSpec
    monkeypatch.setitem(sys.modules, "fake_runner", runner)
    monkeypatch.setitem(
        jobs.JOBS, "fake", jobs.Job("fake_runner:FakeSpec", "fake_runner", "a fake")
    )
    return state


def test_a_job_prints_its_summary_line(fake_job, capsys):
    assert cli.main(["fake", "--set", "value=7"]) == 0
    assert capsys.readouterr().out.strip() == "fake: 7"


@pytest.mark.parametrize(
    "error,code,word",
    [
        (InputError("shards were made for another model"), 2, "error"),
        (SpecError("key 'x' is wrong"), 2, "error"),
        (UserError("stf jobs status needs a submission id"), 2, "error"),
        (JobFailed("12 of 40 records quarantined"), 1, "FAILED"),
    ],
)
def test_user_errors_are_one_line(fake_job, capsys, error, code, word):
    fake_job["raises"] = error
    assert cli.main(["fake"]) == code
    err = capsys.readouterr().err
    assert err.strip() == f"stf fake: {word}: {error}" and "Traceback" not in err


def test_the_model_librarys_user_errors_are_one_line_too(fake_job, capsys):
    from stf_model.errors import ModelInputError

    fake_job["raises"] = ModelInputError("vision grid 24x24 is not divisible by stf_window 5")
    assert cli.main(["fake"]) == 2
    assert "not divisible" in capsys.readouterr().err


def test_verbose_shows_the_traceback_of_a_user_error(fake_job, capsys):
    fake_job["raises"] = InputError("shards were made for another model")
    assert cli.main(["-v", "fake"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "stf fake: error: shards were made" in err


@pytest.mark.parametrize("bug", [ValueError("bad shape in torch"), KeyError("plan"), TypeError()])
def test_any_other_exception_is_a_bug_and_keeps_its_traceback(fake_job, bug):
    fake_job["raises"] = bug
    with pytest.raises(type(bug)):
        cli.main(["fake"])


def test_a_bug_in_a_real_run_exits_with_a_traceback(tmp_path):
    """As a user sees it: a ValueError from deep inside a job is not dressed as a user error."""
    code = (
        "import sys\n"
        "from pipelines import cli\n"
        "from pipelines.synth import job\n"
        "def broken(*args, **kwargs): raise ValueError('inside a library')\n"
        "job.write_corpus = broken\n"
        f"sys.exit(cli.main(['synth', '--set', 'output={tmp_path}']))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "ValueError: inside a library" in done.stderr
