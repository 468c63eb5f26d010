"""Model builders (pure Keras 3, backend-agnostic): the seed's baseline CNN and a fast residual net.

Every model takes raw pixel values (0–255, float32) and normalises inside, so the same input contract
holds for the Keras model, every .tflite variant and the served model. Augmentation layers sit inside
the model (active only in training) so they run on the accelerator.
"""

from __future__ import annotations

from collections.abc import Sequence


def _input_block(keras, input_shape, mean: Sequence[float], std: Sequence[float], flip: bool, translate: float):
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if flip:
        x = keras.layers.RandomFlip("horizontal", name="aug_flip")(x)
    if translate > 0:
        x = keras.layers.RandomTranslation(translate, translate, fill_mode="constant", name="aug_translate")(x)
    variance = [s * s for s in std]
    x = keras.layers.Normalization(mean=list(mean), variance=variance, name="normalize")(x)
    return inputs, x


def seed_cnn(keras, input_shape, num_classes, mean, std, *, flip=False, translate=0.0, width=32):
    """The seed's baseline: 3 conv layers + Dense(1024), as in the original tutorial."""
    inputs, x = _input_block(keras, input_shape, mean, std, flip, translate)
    x = keras.layers.Conv2D(width, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(2 * width, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(2 * width, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(1024, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def _conv_bn(keras, x, filters, name):
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.Activation("relu", name=f"{name}_act")(x)


def fast_net(keras, input_shape, num_classes, mean, std, *, flip=True, translate=0.1, width=32):
    """Airbench-style residual CNN: conv stem, three conv-pool-residual stages, global max pool."""
    inputs, x = _input_block(keras, input_shape, mean, std, flip, translate)
    x = _conv_bn(keras, x, width, "stem")
    for i, filters in enumerate((width, 2 * width, 4 * width)):
        x = _conv_bn(keras, x, filters, f"s{i}a")
        x = keras.layers.MaxPooling2D(name=f"s{i}_pool")(x)
        x = keras.layers.Add(name=f"s{i}_res")([x, _conv_bn(keras, x, filters, f"s{i}b")])
    x = keras.layers.GlobalMaxPooling2D(name="gmp")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name="fast_net")


BUILDERS = {"seed_cnn": seed_cnn, "fast_net": fast_net}


def build_model(name: str, input_shape, num_classes: int, mean, std, *, flip: bool, translate: float, width: int):
    """Build the named model; imports keras lazily so callers stay light."""
    import keras

    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(BUILDERS)}")
    return BUILDERS[name](keras, input_shape, num_classes, mean, std, flip=flip, translate=translate, width=width)


def load_float32(path):
    """The saved .keras model computing in float32, whichever backend and precision trained it.

    A mixed-precision model (mixed_float16 / mixed_bfloat16 layer policies, e.g. trained on a GPU) is rebuilt
    layer by layer with float32 policies and the same weights (its variables are float32 already): pruning,
    TFLite conversion and CPU evaluation then see the float32 graph they expect. Loaded without its optimizer.
    """
    import keras

    model = keras.models.load_model(path, compile=False)
    if all(layer.dtype_policy.name == "float32" for layer in model.layers):
        return model

    def as_float32(layer):
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    rebuilt = keras.models.clone_model(model, clone_function=as_float32)
    rebuilt.set_weights(model.get_weights())
    return rebuilt
