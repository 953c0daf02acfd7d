"""The live prompt configuration of a running process: one immutable snapshot, swapped whole on reload.

A request takes `current()` once and uses that snapshot to the end, so a reload mid-request neither
drops it nor mixes old and new settings. A bad edit is logged and rejected; the last good snapshot stays.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import watchfiles

from brandbot.errors import PromptFileError
from brandbot.logs import get_logger
from brandbot.promptfiles.library import PromptLibrary, load_prompt_library

log = get_logger(__name__)

WATCH_DEBOUNCE_MS = 200
"""Changes within this window are one reload (an editor's save is often several file events)."""

WATCH_STEP_MS = 50
"""How often the watcher checks for changes and for its stop signal."""

WATCH_RETRY_SECONDS = 1.0
"""If the folder cannot be watched (deleted, renamed), try again after this long."""

WATCH_IDENTITY_CHECK_MS = 2000
"""How often a quiet watcher checks that the folder is still the one it watches."""


class LivePromptLibrary:
    """The last good `PromptLibrary` of a folder, reloaded when its files change.

    ```python
    prompts = LivePromptLibrary(Path("prompts"))  # raises PromptFileError if the folder is bad at start
    prompts.start_watching()                       # edits apply within a second or two
    library = prompts.current()                    # take once per request
    ```
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._current = load_prompt_library(folder)  # a bad folder at start is fatal: no last good one
        self._lock = threading.Lock()
        self.version = 1  # goes up each time a changed configuration goes live
        self.last_problems: list[str] = []  # of the latest reload; empty once the files are good again
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def current(self) -> PromptLibrary:
        return self._current

    def reload(self) -> list[str]:
        """Re-read the folder; on errors keep the last good snapshot and return the problems."""
        with self._lock:
            try:
                library = load_prompt_library(self.folder)
            except PromptFileError as error:
                self.last_problems = error.problems
                # Problems name files, lines and fields, never prompt text: safe to log.
                log.warning(
                    "prompt files rejected, keeping the last good ones",
                    version=self.version,
                    problems=error.problems,
                )
                return error.problems
            self.last_problems = []
            if library.fingerprint == self._current.fingerprint:
                return []  # touched, not changed: nothing to announce
            self._current = library
            self.version += 1
            log.info("prompt files reloaded", version=self.version, personas=len(library.personas))
            return []

    def start_watching(self) -> None:
        """Reload on every change under the folder, from a daemon thread, until `stop_watching()`."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        # watchfiles logs every batch of changes at INFO; our own line says what they did.
        logging.getLogger("watchfiles").setLevel(logging.WARNING)
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="prompt-files-watcher", daemon=True)
        self._watcher.start()

    def stop_watching(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
            self._watcher = None

    @property
    def watching(self) -> bool:
        return self._watcher is not None and self._watcher.is_alive()

    def _watch(self) -> None:
        log.debug("watching prompt files", folder=str(self.folder))
        last_error = ""
        while not self._stop.is_set():
            try:
                self._watch_folder_until_replaced()
            except Exception as error:
                # The folder vanished or the OS refused a watch: the last good config stays live.
                if str(error) != last_error:
                    log.warning(
                        "cannot watch prompt files, retrying", error=f"{type(error).__name__}: {error}"
                    )
                last_error = str(error)
            if self._stop.wait(WATCH_RETRY_SECONDS):
                break
            if _identity(self.folder) is not None:
                self._reload_safely()  # changes made while nothing watched are not lost

    def _watch_folder_until_replaced(self) -> None:
        """Reload on each batch of changes; return when stopped or when the folder is another one now.

        A watch follows the folder it started on: deleted and recreated, or swapped by a deploy tool,
        the path would go silent. Checking its identity every few seconds catches that.
        """
        identity = _identity(self.folder)
        caught_up = False
        for changes in watchfiles.watch(
            self.folder,
            stop_event=self._stop,
            debounce=WATCH_DEBOUNCE_MS,
            step=WATCH_STEP_MS,
            rust_timeout=WATCH_IDENTITY_CHECK_MS,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            if changes or not caught_up:
                # The first pass also catches edits made before the watch was in place (e.g. while a
                # worker loaded its model after reading the files).
                self._reload_safely()
                caught_up = True
            if _identity(self.folder) != identity:
                return

    def _reload_safely(self) -> None:
        try:
            self.reload()
        except Exception:
            # A bug in loading must not end the watcher: the process keeps its last good config.
            log.exception("prompt reload failed unexpectedly, keeping the last good ones")


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        stat = folder.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino
