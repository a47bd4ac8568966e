"""Pyramid: plan the resolution levels of an image and define how each is computed from the one above.

Each level halves y and x (and z, once the image is isotropic enough: z is
halved only when its spacing is no coarser than that of x, so an anisotropic
stack keeps its planes until x catches up), until a plane fits one chunk.
Each output pixel is the mean of the 2x2 (or 2x2x2) block of the level above;
at an odd edge the block holds fewer pixels and their mean is taken (the edge
is replicated, which gives exactly that mean). Integers are rounded to
nearest. Level k's scale is the product of the factors times level 0's, and
its translation keeps pixel centres in place: + (factor - 1)/2 pixels of the
level above along each halved axis.

Label images are never averaged: each output pixel is the **mode** of its
block (the most frequent label value; a tie goes to the smallest value; at an
odd edge the block holds fewer pixels and their mode is taken). A label's
levels are not planned from the label itself but follow the image it
annotates exactly (same shapes, chunks, scales and translations, without the
channel axis), so every level of the label lies over the same level of the image.

The plan is this stage's record, and says per level how it is made
(``Level.downsampling``: ``mean`` or ``mode``); the pixels of every level are
computed in the compress stage's single streaming pass (``downsample`` on each
region as it is written), so the source is read once.
"""

from __future__ import annotations

from zarrchive import batch
from zarrchive.archive.lineage import Traced, stage_task, traced
from zarrchive.config import PyramidSettings
from zarrchive.errors import InputError
from zarrchive.records import ImageRecord, Level


def halve_z(level: Level, axes: list[str], calibrated_z: bool) -> bool:
    """Whether the next level halves z too: only a calibrated z whose spacing is no coarser than x's."""
    if "z" not in axes or not calibrated_z:
        return False
    z, x = axes.index("z"), axes.index("x")
    return level.shape[z] > 1 and level.scale[z] <= level.scale[x] * (1 + 1e-6)


def next_level(level: Level, halved: tuple[int, ...], chunks: tuple[int, ...]) -> Level:
    """Shape and transforms of the level below ``level``, halving the axes at positions ``halved``."""
    shape, scale, translation = list(level.shape), list(level.scale), list(level.translation)
    for axis in halved:
        shape[axis] = -(-shape[axis] // 2)
        translation[axis] = translation[axis] + scale[axis] / 2
        scale[axis] = scale[axis] * 2
    return Level(path=str(int(level.path) + 1), shape=tuple(shape),
                 chunks=tuple(min(c, n) for c, n in zip(chunks, shape)),
                 scale=tuple(scale), translation=tuple(translation))


def plan_levels(level0: Level, axes: list[str], max_levels: int, calibrated_z: bool = False) -> list[Level]:
    """All levels: halve y and x (and z when ``halve_z``) until the largest plane fits one chunk
    (at most ``max_levels``)."""
    yx = (axes.index("y"), axes.index("x"))
    base_chunks = level0.chunks
    levels = [level0]
    while len(levels) < max_levels:
        last = levels[-1]
        if all(last.shape[a] <= base_chunks[a] for a in yx):
            break
        halved = ((axes.index("z"),) if halve_z(last, axes, calibrated_z) else ()) + yx
        levels.append(next_level(last, halved, base_chunks))
    return levels


def build_pyramid(image: ImageRecord, settings: PyramidSettings, annotated: ImageRecord | None = None) -> ImageRecord:
    """The image's record with every level planned (shapes, chunks, exact scale and translation, method).

    A label's levels follow ``annotated``, the planned image it annotates (``follow_image``).
    """
    if image.kind == "label":
        return follow_image(image, annotated)
    axes = image.axis_names
    z_axis = next((a for a in image.axes if a.name == "z"), None)
    x_axis = next(a for a in image.axes if a.name == "x")
    calibrated_z = bool(z_axis and z_axis.unit and x_axis.unit)
    levels = plan_levels(image.levels[0], axes, settings.max_levels, calibrated_z)
    return image.model_copy(update={"levels": tuple(lvl.model_copy(update={"downsampling": settings.method})
                                                    for lvl in levels)})


def follow_image(label: ImageRecord, image: ImageRecord | None) -> ImageRecord:
    """The label's record with the levels of the image it annotates, without the channel axis, made by mode.

    Its axes (and units) are the image's too. Raises ``InputError`` naming the label's file when the image is
    missing (it failed) or the label's shape is not the image's level-0 shape without channels.
    """
    shown_as = label.shown_as
    if image is None:
        raise InputError(shown_as, f"the image it annotates ({label.label_of}) was not converted (see that image's "
                                   "failure); the label is not published on its own")
    keep = [i for i, axis in enumerate(image.axes) if axis.name != "c"]
    axes = tuple(image.axes[i] for i in keep)
    wanted = tuple(image.shape[i] for i in keep)
    if label.shape != wanted or label.axis_names != [a.name for a in axes]:
        def shown(names, shape):
            return " × ".join(f"{n}={s}" for n, s in zip(names, shape))

        raise InputError(shown_as, f"the label's shape ({shown(label.axis_names, label.shape)}) must "
                                   f"equal that of the image it annotates, {image.source_path}, without channels "
                                   f"({shown([a.name for a in axes], wanted)})")
    levels = tuple(Level(path=lvl.path, shape=tuple(lvl.shape[i] for i in keep),
                         chunks=tuple(lvl.chunks[i] for i in keep), scale=tuple(lvl.scale[i] for i in keep),
                         translation=tuple(lvl.translation[i] for i in keep), downsampling="mode")
                   for lvl in image.levels)
    notes = list(label.notes)
    if label.calibrated and label.levels[0].scale != levels[0].scale:
        notes.append(f"{shown_as}: the label's own pixel size {label.levels[0].scale} differs from that of "
                     f"{image.source_path} {levels[0].scale}; the label takes the image's")
    return label.model_copy(update={"axes": axes, "levels": levels, "calibrated": image.calibrated,
                                    "notes": tuple(notes)})


def labels_with_images(converted: list[ImageRecord],
                       planned: list[ImageRecord]) -> list[tuple[ImageRecord, ImageRecord | None]]:
    """Each label among ``converted`` with the planned image it annotates (None when that image failed)."""
    by_id = {image.image_id: image for image in planned}
    return [(label, by_id.get(label.label_of or "")) for label in converted if label.kind == "label"]


@stage_task(name="pyramid", task_run_name="pyramid: {image.image_id}")
def pyramid(image: ImageRecord, settings: PyramidSettings,
            annotated: ImageRecord | None = None) -> Traced[ImageRecord]:
    return traced("pyramid", build_pyramid, image, settings, annotated, image_id=image.image_id)


@stage_task(name="pyramid", task_run_name="pyramid: {name}",
            cache_policy="none")  # (its inputs can be large; its items are small: redone on a rerun)
def pyramid_batch(items: list[tuple[ImageRecord, ImageRecord | None]], settings: PyramidSettings,
                  name: str) -> list[Traced[ImageRecord] | batch.ItemFailed]:
    """``pyramid`` for many images (image, the image a label annotates) in one task run (``zarrchive.batch``)."""
    return batch.run("pyramid", items, lambda image, annotated: pyramid.__wrapped__(image, settings, annotated),
                     lambda item: item[0].image_id)
