"""Writes docs/options.md, every script's options, from the parsers themselves (option.py), so the tables
can never disagree with `--help`. tests/test_docs.py fails when docs/options.md is out of date:

    python docs/make_options.py
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import option  # noqa: E402

SCRIPTS = [  # (command, parser factory)
    ("python test.py", option.get_test_parser),
    ("python train.py", option.get_train_parser),
    ("bash test_video.sh INPUT [OUTPUT] / python demo/make_video.py", option.get_video_parser),
    ("python evaluate.py", option.get_evaluate_parser),
    ("python demo/app.py", option.get_demo_parser),
    ("python export.py", option.get_export_parser),
]
OUTPUT = ROOT / "docs" / "options.md"


def cell(text):
    return " ".join(str(text).split()).replace("|", "\\|")


def option_rows(parser):
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        names = ", ".join(f"`{name}`" for name in action.option_strings)
        if action.choices is not None and not isinstance(action.choices, range):
            names += " {" + ",".join(map(str, action.choices)) + "}"
        default = "" if action.default in (None, "", argparse.SUPPRESS) else f"`{action.default}`"
        help_text = (action.help or "") % {"default": action.default, "prog": parser.prog}
        yield f"| {names} | {default} | {cell(help_text)} |"


def render():
    lines = [
        "# Options",
        "",
        "Generated from the scripts' own parsers by `python docs/make_options.py`; `--help` on each script says",
        "the same. Booleans take `--flag`, `--flag true|false` and `--no-flag`.",
        "",
    ]
    for command, make_parser in SCRIPTS:
        parser = make_parser()
        lines += [f"## `{command}`", "", cell(parser.description or ""), ""]
        lines += ["| option | default | what |", "|---|---|---|", *option_rows(parser), ""]
    return "\n".join(lines)


def main():
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
