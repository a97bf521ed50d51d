"""Sharpness: the variance of the Laplacian (3×3 aperture) of the grey image, in grey levels².

Edges and fine texture give large second derivatives; blur removes them. A low value therefore
points at an out-of-focus, motion-blurred or heavily upscaled image, where object boundaries
(and so boxes) are uncertain. The scale is absolute and unbounded: compare images of one dataset.
"""

import cv2
import numpy as np

NAME = "sharpness"
TITLE = "Sharpness (Laplacian variance)"
LEVEL = "image"
SUSPICIOUS = "low"
RANGE = (0.0, None)


def score(image: np.ndarray, scene: dict) -> float | None:
    if image.shape[0] < 3 or image.shape[1] < 3:
        return None
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    # The Laplacian of 8-bit grey is a whole number in [-1020, 1020]: 16-bit integers hold it exactly.
    laplacian = cv2.Laplacian(grey, cv2.CV_16S)
    # Its sum and sum of squares are exact in doubles (under 2**53 for any image below a gigapixel), so
    # the variance comes from two quick passes over the pixels and is rounded only in its last few steps: more
    # exact than numpy's float32 .var(), and a tenth of its time.
    count = laplacian.size
    total = cv2.sumElems(laplacian)[0]
    squares = cv2.norm(laplacian, cv2.NORM_L2SQR)
    return float(max(squares - total * total / count, 0.0) / count)
