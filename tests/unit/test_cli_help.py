"""The command line as a newcomer meets it: every default in --help, timm's flag names, global flags anywhere."""

import argparse

import pytest

from lossguided.cli import _HelpFormatter, build_parser


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_shows_every_default(name):
    command = _commands()[name]
    formatter = _HelpFormatter(name)
    missing = []
    for action in command._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._StoreTrueAction | argparse._AppendAction) or action.required:
            continue  # a switch, a repeatable override or a required value: nothing to default
        if "default" not in formatter._get_help_string(action):
            missing.append(action.option_strings[0])
    assert not missing, f"lossguided {name}: options whose --help gives no default: {missing}"
    assert "default" in command.format_help()


def test_global_flags_after_the_command_and_timm_aliases():
    parser = build_parser()
    args = parser.parse_args(
        [
            "train",
            "--train",
            "t.csv",
            "--output",
            "o",
            "-v",
            "--img-size",
            "32",
            "--opt",
            "adamw",
            "--initial-checkpoint",
            "a.pt",
            "-b",
            "8",
            "-j",
            "0",
        ]
    )
    assert args.verbose and args.out == "o" and args.image_size == 32 and args.optimizer == "adamw"
    assert args.init_from == "a.pt" and args.batch_size == 8 and args.workers == 0
    assert not parser.parse_args(["train", "--train", "t.csv", "--out", "o"]).verbose
    assert parser.parse_args(["-v", "select", "l.npz", "--out", "s.csv"]).verbose
    args = parser.parse_args(
        [
            "evaluate",
            "--checkpoint",
            "c.pt",
            "--test",
            "t.csv",
            "--predictions",
            "p.csv",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--top-k",
            "2",
        ]
    )
    assert (args.predictions, args.batch_size, args.workers, args.top_k) == ("p.csv", 4, 0, 2)


def test_a_loss_table_named_other_than_npz_is_one_line(tmp_path, capsys):
    from lossguided.cli import main

    assert main(["losses", "--checkpoint", "x.pt", "--train", "t.csv", "--out", str(tmp_path / "l.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the loss table is a .npz file; name it l.npz" in err[0]
