"""The live prompt configuration of a running process: one immutable snapshot, swapped whole on reload."""

from __future__ import annotations

import threading
from pathlib import Path

from brandbot.errors import PromptFileError
from brandbot.logs import get_logger
from brandbot.promptfiles.library import PromptLibrary, load_prompt_library

log = get_logger(__name__)


class LivePromptLibrary:
    """Holds the last good `PromptLibrary`; a request takes `current()` once and uses it to the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._current = load_prompt_library(folder)  # a bad folder at start is fatal: no last good one
        self._lock = threading.Lock()

    def current(self) -> PromptLibrary:
        return self._current

    def reload(self) -> list[str]:
        """Re-read the folder; on errors keep the last good snapshot and return the problems."""
        with self._lock:
            try:
                library = load_prompt_library(self.folder)
            except PromptFileError as error:
                log.warning("prompt files rejected, keeping the last good ones", problems=error.problems)
                return error.problems
            self._current = library
            log.info("prompt files reloaded", personas=len(library.personas))
            return []
