"""Judging a trained model on labelled images: metrics with intervals, calibration, comparison of runs,
figures, the HTML report and the model card.

It may import `training`, `inference`, `review`, `models` and `data`, never `serve` or `cli`.
"""
