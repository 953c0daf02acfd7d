"""Admin prompt files: personas (the brand voice) and routing (which persona answers where)."""

from brandbot.promptfiles.library import PromptLibrary, Resolution, load_prompt_library
from brandbot.promptfiles.live import LivePromptLibrary
from brandbot.promptfiles.models import Persona, Routing, Sampling

__all__ = [
    "LivePromptLibrary",
    "Persona",
    "PromptLibrary",
    "Resolution",
    "Routing",
    "Sampling",
    "load_prompt_library",
]
