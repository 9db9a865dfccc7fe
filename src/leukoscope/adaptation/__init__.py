"""Adapting a model package to a second lab: fine-tune on the lab's verified images (replaying the original
training part so it does not forget), refit the review rules on both labs' data, and write a new package
that names its parent, both datasets and its before/after figures, or refuse when it would not help.

It sits above `training` and `inference` (it uses the training epochs and the export) and `evaluation`, and
below `serve` and `cli`.
"""
