"""Admin prompt files: personas (the brand voice) and routing (which persona answers where)."""

from brandbot.promptfiles.library import PromptLibrary, load_prompt_library
from brandbot.promptfiles.models import Persona, Routing, Sampling

__all__ = ["Persona", "PromptLibrary", "Routing", "Sampling", "load_prompt_library"]
