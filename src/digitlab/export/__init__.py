"""Export: a trained run as an ONNX file (optionally INT8), a hub-ready folder with a model card, pushed
to the Hugging Face Hub.

Usage::

    from digitlab.export.onnx import export_onnx      # RUN/export/model.onnx (+ model.int8.onnx)
    from digitlab.export.hub import export_hub        # RUN/export/hub/
    from digitlab.export.push import push             # create the repo, upload the folder

The file formats (tensor names, metadata keys, folder layout) are defined once, in
``digitlab.inference.formats``, where ``Predictor.from_path`` reads them back.
"""

from digitlab.export.errors import ExportError

__all__ = ["ExportError"]
