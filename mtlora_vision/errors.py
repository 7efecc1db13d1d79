"""The mark of an error in the user's input, which the tools report without a traceback.

An :class:`InputError` says that a file, a config value or an argument is wrong, and its message
names it and what to do. The tools (``mtlora_vision.cli.run_tool``) print such a message alone,
as ``train.py: error: ...`` with exit status 2, instead of a traceback through mmengine; anything
else (a bug) keeps its traceback. ``MTLORA_TRACEBACK=1`` shows the traceback of input errors too.
The classes that carry the mark keep their usual base (``ValueError``, ``KeyError``), so
callers that catch those still do.
"""

from __future__ import annotations


class InputError(Exception):
    """Mixin: the user's input is wrong; the message names it and says what to do."""


class ConfigError(InputError, ValueError):
    """A config value or command-line setting that cannot be used as given."""
