"""Shared command-line pieces: every entry point answers bad input with one line and exit code 2.

One error style for every CLI: ``<prog>: error: <message>`` on stderr. An unknown name (sweep, preset,
flag, choice, task, sub-command, option) names its nearest valid spelling when there is one.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141
"what a shell reports for a process killed by SIGPIPE (`... | head`)"


def nearest(name: str, valid: Iterable[str]) -> str | None:
    """The closest valid spelling of ``name`` (difflib ratio >= 0.7: "nope" suggests nothing), or None."""
    close = difflib.get_close_matches(name, [str(v) for v in valid], n=1, cutoff=0.7)
    return close[0] if close else None


def unknown_name(kind: str, name: str, valid: Iterable[str], *, listed: str | None = None) -> str:
    """``unknown sweep 'norm_placment'; did you mean 'norm_placement'?`` or, with nothing close, the valid list.

    ``listed`` says where the full list is (e.g. "python -m sweeps list") when a suggestion replaces it.
    """
    valid = [str(v) for v in valid]
    best = nearest(name, valid)
    if best is None:
        return f"unknown {kind} {name!r}; valid: {', '.join(valid) or 'none'}"
    return f"unknown {kind} {name!r}; did you mean {best!r}?" + (f" (all of them: {listed})" if listed else "")


def error_line(prog: str, message: object) -> str:
    return f"{prog}: error: {message}"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default (unless the help text already states it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        if action.required:
            return f"{text} (required)"
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'off' if action.default is False else 'on'})"
        if action.default is None or isinstance(action, argparse._HelpAction):
            return text
        return text + " (default: %(default)s)"


_INVALID_CHOICE = re.compile(r"argument (?P<arg>.+?): invalid choice: '(?P<given>.*?)' \(choose from (?P<choices>.*)\)$")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: ... (see --help)``), not usage + message, and
    an unknown choice or option names its nearest valid spelling."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        m = _INVALID_CHOICE.match(message)
        if m:
            choices = [c.strip().strip("'") for c in m["choices"].split(",")]
            best = nearest(m["given"], choices)
            if best is not None:
                message = f"argument {m['arg']}: invalid choice {m['given']!r}; did you mean {best!r}?"
        self.exit(EXIT_USAGE, error_line(self.prog, f"{message} (see --help)") + "\n")

    def fail(self, message: object) -> int:
        """Print a usage error found after parsing (a ConfigError, a missing store) in the same style."""
        print(error_line(self.prog, message), file=sys.stderr)
        return EXIT_USAGE

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        argv = list(sys.argv[1:] if args is None else args)
        parsed, extras = self.parse_known_args(argv, namespace)
        if extras:
            parser = self._chosen_subparser(argv)
            message = f"unrecognized arguments: {' '.join(extras)}"
            unknown = next((e for e in extras if e.startswith("--")), None)
            best = nearest(unknown.split("=")[0], parser._option_string_actions) if unknown else None
            self.error(message + (f"; did you mean {best}?" if best else ""))
        return parsed

    def _chosen_subparser(self, argv: list[str]) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for arg in argv:
                    if arg in action.choices:
                        sub = action.choices[arg]
                        return sub._chosen_subparser(argv) if isinstance(sub, OneLineParser) else sub
        return self


def positive_int(text: str) -> int:
    """argparse type for counts: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def run_main(main: Callable[[], int]) -> NoReturn:
    """``sys.exit(main())``, except that a reader closing the pipe early (``--list-flags | head``) ends the
    program quietly instead of with a BrokenPipeError traceback."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at devnull so that flush cannot raise a second time
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(EXIT_BROKEN_PIPE)
    sys.exit(code)
