"""ComfyUI node classes (classic API). Only ``nodes/host.py`` may import ComfyUI services.

The node set arrives with the nodes issue; the mappings are exported from the start so the pack
loads in ComfyUI at every stage.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
