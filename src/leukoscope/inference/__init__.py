"""Running a trained model: the model package, the Predictor (ONNX Runtime or PyTorch), int8 checks,
export and Grad-CAM.

It may import `review`, `models` and `data`, never `training` (a deployed model needs no training code),
`evaluation`, `serve` or `cli`. The ONNX prediction path imports no torch.
"""
