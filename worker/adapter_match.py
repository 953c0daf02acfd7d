"""Which personas this worker may answer for: a persona's `lora:` is served, never silently ignored.

A worker serves one set of weights for its whole life (ExLlamaV2 applies an adapter to every job of its
generator, ExLlamaV3 takes none, the CPU engine merges it at load): its base model, base + the adapter in
`BRANDBOT_LORA_DIR`, or a folder `brandbot tune --merge` wrote (its `brandbot-tune.json` names the
adapter merged in). A persona with `lora:` is routed to such a worker by its `model:` queue; a worker
asked to answer for a persona whose adapter it does not serve refuses, with a kind message in chat and a
log line naming the persona, rather than answer in the base model's voice. Personas without `lora:` are
answered by whatever their queue serves (choosing the queue is choosing the weights).

Adapters are compared by fingerprint (the SHA-256 of their weights), so the same adapter copied to
another host, or merged and then quantized, still matches.
"""

from __future__ import annotations

import threading
from pathlib import Path

from brandbot.errors import BrandbotError
from brandbot.promptfiles.library import PromptLibrary
from brandbot.promptfiles.models import Persona
from worker.tuning.adapters import ADAPTER_WEIGHTS, fingerprint


class AdapterMatcher:
    """```python
    matcher = AdapterMatcher(served=served_fingerprint(settings.model_dir, settings.lora_dir))
    reason = matcher.mismatch(persona, library)  # None: this worker answers for it
    ```
    """

    def __init__(self, *, served: str | None) -> None:
        self.served = served
        self._cache: dict[tuple[Path, int, int], str] = {}
        self._lock = threading.Lock()

    def mismatch(self, persona: Persona, library: PromptLibrary) -> str | None:
        """Why this worker must not answer for `persona` (for the log), or None when it may."""
        path = library.lora_path(persona)
        if path is None:
            return None
        try:
            wanted = self._fingerprint(path)
        except (OSError, BrandbotError):
            return f"its LoRA folder {path} is unreadable or has no {ADAPTER_WEIGHTS}"
        if wanted == self.served:
            return None
        serves = f"adapter {self.served}" if self.served else "the base model"
        return f"its adapter {wanted} ({path}) is not served here; this worker serves {serves}"

    def _fingerprint(self, path: Path) -> str:
        stat = (path / ADAPTER_WEIGHTS).stat()
        key = (path, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key not in self._cache:
                self._cache[key] = fingerprint(path)
            return self._cache[key]
