"""Inference stage: model folders, preprocessing, backends, decoders, NMS, the Detector.

    model.py       model folder (ONNX + model.json) loading and checks
    preprocess.py  letterbox maths and swscale resize/colour conversion
    backend.py     the Backend protocol;  onnxrt.py: the ONNX Runtime backend
    decoders.py    yolox / yolov8 / nms output decoders;  nms.py: IoU and NMS
    detector.py    Detector: frame -> Detections (one per worker thread)
    golden.py      golden-input validation of a model folder
    errors.py      InferenceError hierarchy

Nothing is imported here: importing the package loads no runtime.
"""
