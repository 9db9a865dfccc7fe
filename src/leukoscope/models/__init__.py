"""Networks and what they expect: the timm factory, checkpoints, input preprocessing, scoring on images.

Above `data`, below everything else: it may import `leukoscope.data` only. `preprocessing` stays free of
torch (the ONNX prediction path needs it); the rest imports torch.
"""
