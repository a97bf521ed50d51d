"""Global contrast: the standard deviation of the grey image divided by 255 (0 to 0.5).

Grey is OpenCV's RGB→GRAY luminance. A flat, washed-out or fogged image has little spread of
intensities and scores low; at 0 the image is a single uniform colour (blank, corrupt or a
placeholder), which can hold no visible object.
"""

import math

import cv2
import numpy as np

NAME = "contrast"
TITLE = "Contrast"
LEVEL = "image"
SUSPICIOUS = "low"
RANGE = (0.0, 0.5)


def score(image: np.ndarray, scene: dict) -> float | None:
    if image.size == 0:
        return None
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    # The sums of the grey levels and of their squares (a square fits in 16 bits) are whole numbers, exact from
    # cv2's reductions; the variance from them in integer arithmetic, rounded once. No float image is needed.
    n = grey.size
    total = int(cv2.sumElems(grey)[0])
    squares = int(cv2.sumElems(cv2.multiply(grey, grey, dtype=cv2.CV_16U))[0])
    return math.sqrt((n * squares - total * total) / (n * n)) / 255.0
