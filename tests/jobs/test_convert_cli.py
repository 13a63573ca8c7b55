"""`stf convert` as a user runs it: the spec / --set form, exit 0 on success, exit 2 with one
line naming the problem for a checkpoint that does not fit or a directory that is not one."""

from support.checkpoints import published_checkpoint

from pipelines.cli import main
from stf_model import STFForConditionalGeneration


def test_convert_command_writes_a_model_and_reports_mismatches(tmp_path, capsys):
    src = tmp_path / "published"
    published_checkpoint(src, True, "safetensors", True)
    args = ["convert", "--set", f"source={src}", "--set", f"output={tmp_path / 'ours'}"]
    assert main(args) == 0
    assert "36 vision tokens per image" in capsys.readouterr().out
    assert STFForConditionalGeneration.from_pretrained(tmp_path / "ours").config.stf_window == 2

    # A window the weights cannot have: 4x4 windows need 16C projector inputs.
    assert main([*args, "--set", "window=4"]) == 2
    err = capsys.readouterr().err
    assert "does not match" in err and "Traceback" not in err
    nowhere = ["convert", "--set", f"source={tmp_path / 'nowhere'}", "--set", "output=o"]
    assert main(nowhere) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["convert", "--set", "source=s3://bucket/x", "--set", "output=o"]) == 2
