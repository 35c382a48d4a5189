"""medsam-edge: MedSAM from a PyTorch checkpoint to ONNX/TensorRT and a light video runtime.

Nothing heavy is imported here: the runtime must start without torch, and each
subpackage imports what it needs itself.
"""

__version__ = "0.1.0"
