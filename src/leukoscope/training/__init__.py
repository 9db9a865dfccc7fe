"""Training a model: configuration, data preparation, the fit loop and its epochs, stages, augmentation,
soft targets, run folders, devices and distributed runs.

It may import `review`, `models` and `data`, never `inference` (the two are independent), `evaluation`,
`serve` or `cli`: progress goes out through callbacks, not through the command line's progress bar.
"""
