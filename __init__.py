"""ComfyUI entry point of ComfyUI-WanCore: the classic node mappings (see DESIGN.md §2).

ComfyUI imports this file as a package from ``custom_nodes/<any folder>/``. The node classes live
in the relative package ``.nodes`` and reach the engine relatively (``..wan_core``), so nothing
is added to ``sys.path`` and ComfyUI's own top-level ``nodes`` module is never shadowed.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"
"""Front-end extension ComfyUI serves and loads: greys out the sampler's size widgets while conditioning sets the
size."""

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
