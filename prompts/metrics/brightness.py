"""Mean luminance of the image, from 0 (black) to 1 (white).

Computed as the mean of the grey image (ITU-R BT.601 weights, as OpenCV's RGB→GRAY) divided
by 255. A low value points at an under-exposed, nearly black or blank frame, in which objects are
hard to see and labels are likely to be missing or wrong.
"""

import cv2
import numpy as np

NAME = "brightness"
TITLE = "Brightness"
LEVEL = "image"
SUSPICIOUS = "low"
RANGE = (0.0, 1.0)


def score(image: np.ndarray, scene: dict) -> float | None:
    if image.size == 0:
        return None
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    # cv2's sum of whole grey levels is exact, and much cheaper than numpy's mean of uint8 (a float64 pass).
    return cv2.sumElems(grey)[0] / grey.size / 255.0
