"""Video files on PyAV: formats, frame layouts, the streaming writer and reader, metadata, output paths.

Frames are ``[F, H, W, 3]`` RGB, uint8 or float in 0..1 (ComfyUI's IMAGE layout).
"""

from .formats import VideoFormat, check_fps, extension, video_format
from .frames import Clip, images_to_video, video_to_images
from .metadata import METADATA_KEYS, read_metadata
from .paths import next_output_path
from .reader import read_image, read_video
from .writer import write_video

__all__ = ["VideoFormat", "check_fps", "extension", "video_format", "Clip", "images_to_video", "video_to_images",
           "METADATA_KEYS", "read_metadata", "next_output_path", "read_image", "read_video", "write_video"]
