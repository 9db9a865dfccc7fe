"""Region of interest: the nucleated white cells of a blood-smear field, found by classic image processing.

Technologists think in cells, not fields, and Grad-CAM can only be checked against "where the cells are"
once something says where they are. This layer does that on the CPU in milliseconds with scikit-image
(no network, no training), so it can run before every prediction. It sits just above `leukoscope.data`
and imports nothing of leukoscope's models.
"""

from leukoscope.segmentation.field import (
    PARAMS,
    CellRecord,
    FieldSegmentation,
    SegmentationParams,
    segment_field,
)

__all__ = ["PARAMS", "CellRecord", "FieldSegmentation", "SegmentationParams", "segment_field"]
