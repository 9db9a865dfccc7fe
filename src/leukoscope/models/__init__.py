"""Networks and what they expect: the timm factory, checkpoints, input preprocessing, scoring on images.

Above `data`, below everything else: it may import `leukoscope.data` only. `preprocessing` and
`onnx_session` stay free of torch (the ONNX prediction path needs them); the rest imports torch.
"""
