"""When a human should look: review reasons and codes, image-quality rules, the out-of-distribution score,
calibration, the thresholds fitted at export, sample-level calls and review metrics.

Arrays and reasons in, decisions out, with no network in sight: it may import `leukoscope.models` and
`leukoscope.data`, never `inference`, `training`, `evaluation`, `serve` or `cli`; and no torch.
"""
