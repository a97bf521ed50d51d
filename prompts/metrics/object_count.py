"""Number of annotations in the image (all of them, crowd regions included).

A very high count is suspicious: duplicated annotations, an exploded polygon, or an automatic
labeller gone wrong all produce images with far more objects than the rest of the dataset.
"""

import numpy as np

NAME = "object_count"
TITLE = "Objects per image"
LEVEL = "image"
SUSPICIOUS = "high"
RANGE = (0, None)


def score(image: np.ndarray, scene: dict) -> float | None:
    return float(len(scene.get("annotations") or []))
