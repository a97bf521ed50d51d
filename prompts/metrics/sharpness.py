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
    # float32 output: the Laplacian of uint8 data is signed and exceeds 255.
    return float(cv2.Laplacian(grey, cv2.CV_32F).var())
