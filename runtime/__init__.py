"""medsam_edge.runtime: frames in, masks out, without torch."""


def __getattr__(name: str):
    # Lazy, so importing a runtime submodule does not load onnxruntime.
    if name == "Predictor":
        from medsam_edge.runtime.predictor import Predictor

        return Predictor
    raise AttributeError(name)
