"""``--help`` that reads like a well-kept command line: ``PATHS...``, and flags without a type.

Typer labels every parameter with its Python type: ``<bool>`` after each flag,
``<list[Path]>`` after a list argument, and ``{paths}...`` in the usage line. Here
arguments read ``PATHS...`` (``[OUT]`` when optional) and flags show no type; options
that take a value keep theirs (``<path>``, ``<int>``).
"""

from __future__ import annotations

from typing import Any, get_args

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption


class _Argument(TyperArgument):
    """An argument shown as ``NAME`` / ``NAME...``, with no Python type beside it."""

    @property
    def display_name_raw(self) -> str:
        return (self.metavar or self.name or "").upper()

    def _rich_display_name(self) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        name = self._rich_display_name()
        return name if self.required else f"[{name}]"

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class _Option(TyperOption):
    """An option; a flag shows no ``<bool>``, a repeatable one its element type."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag:
            return None
        args = get_args(self.type_descriptor.annotation)
        if self.multiple and len(args) == 1:
            return f"<{self._bare_type(args[0]).lower()}>"
        return super().display_type_rich(ctx)


class CleanHelpCommand(TyperCommand):
    """A Typer command whose parameters are shown as :mod:`mmsearch.cli.help` describes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _restyle(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            _restyle(option)
        return option


class CleanHelpGroup(TyperGroup):
    """The top-level group, its own options (``--help``, ``--version``) shown the same way."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            _restyle(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            _restyle(option)
        return option


def _restyle(param: Any) -> None:
    if type(param) is TyperArgument:
        param.__class__ = _Argument
    elif type(param) is TyperOption:
        param.__class__ = _Option


def use_clean_help(app: typer.Typer) -> None:
    """Makes every command registered on ``app`` so far a :class:`CleanHelpCommand`."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = CleanHelpCommand
