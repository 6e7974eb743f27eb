"""Pictures: labels stay readable (the outline sits on the text, not beside it)."""

from __future__ import annotations

import cv2
import numpy as np

from defectwatch.pipeline.render import draw_marks, put_label

TITLE = "WSe2-sim_stm_50nm_0005.sxm: 7 troughs (cyan), 18 peaks (magenta)"


def test_a_labels_outline_hugs_its_letters_along_the_whole_line():
    grey = np.full((40, 700, 3), 128, np.uint8)
    put_label(grey, TITLE, (10, 24))
    white = np.where((grey > 200).all(axis=2))[1]
    black = np.where((grey < 60).all(axis=2))[1]
    (width, _), _ = cv2.getTextSize(TITLE, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
    assert abs((white.max() - white.min()) - width) < 10  # the text as OpenCV measures it
    assert black.max() <= white.max() + 2 and black.min() >= white.min() - 2


def test_marked_picture_has_its_title_and_scale_bar():
    bgr = draw_marks(np.full((64, 64), 0.5, np.float32), [], pixel_size_nm=0.1, title=TITLE)
    assert bgr.shape[0] >= 768 and bgr.shape[2] == 3
    assert (bgr[:30] > 200).all(axis=2).any()  # the title, in white
    assert (bgr[-30:, :200] > 200).all(axis=2).sum() > 100  # the scale bar and its label
