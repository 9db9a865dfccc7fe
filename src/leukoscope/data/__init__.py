"""Datasets as files: classes, safe image decoding, manifests, discovery, splits, folds, atomic writes.

The bottom layer: it knows images and labels, not networks. It imports nothing of leukoscope but
`leukoscope.errors`, and never torch, so `leukoscope data check` and the prediction path start fast.
"""
