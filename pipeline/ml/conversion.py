"""Keras → TFLite: an inference-only SavedModel export, then fp32 / fp16 / dynamic-range / full-int8 flatbuffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

VARIANTS = ("fp32", "fp16", "dynamic", "int8")


def convert(
    saved_model_dir: Path, variant: str, representative: np.ndarray | None = None, per_channel: bool = True
) -> bytes:
    """Convert an exported SavedModel to a .tflite flatbuffer of the given variant.

    `per_channel=False` quantises int8 weights per tensor: the per-channel scales and int64 zero points are ~4 %
    of a 300k-parameter model; on the default model per-tensor measured the same accuracy.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if variant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if representative is None:
            raise ValueError("int8 conversion needs a representative dataset")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([sample[None].astype(np.float32)] for sample in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        converter._experimental_disable_per_channel = not per_channel
    elif variant != "fp32":
        raise ValueError(f"unknown TFLite variant {variant!r}; choose one of {VARIANTS}")
    return converter.convert()


def export_saved_model(model, path: Path) -> None:
    """SavedModel with one inference endpoint called with training=False.

    `model.export` leaves `training` unresolved, so BatchNorm and the augmentation layers export both
    branches (unfoldable BN, random ops TFLite cannot run); an explicit endpoint exports only inference.
    """
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serve",
        fn=lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image")],
    )
    archive.write_out(str(path), verbose=False)
