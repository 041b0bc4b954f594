"""ComfyUI entry point of ComfyUI-WanCore: the classic node mappings (see DESIGN.md §2).

ComfyUI imports this file as a package from ``custom_nodes/<any folder>/``; the node classes live
in the relative package ``.nodes`` and the engine in ``wan_core``.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # make the bundled engine importable when the pack is not pip-installed
    sys.path.append(_HERE)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
