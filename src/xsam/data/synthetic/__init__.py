"""A procedural synthetic world written in the real public dataset formats.

Scenes of textured stuff (sky, grass, water, sand, wall) with coloured shapes drawn over them, annotated
for every X-SAM task and written the way COCO panoptic / instances / semantic, RefCOCO, ReasonSeg,
GranD-f, COCO-Interactive, COCO-VGD and LLaVA ship their files, so the readers, training and evaluation
run on it unchanged. :func:`generate_world` writes one; ``world.json`` in it says where everything is.
"""

from .world import generate_world

__all__ = ["generate_world"]
