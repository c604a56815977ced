"""The training objective of Sec. 3.4 of the paper: perceptual reconstruction,
least-squares GAN with feature matching, and the equivariance constraints
(Eq. 10-12), with the original's weights, gradient stops and quirks.

A loss whose weight is 0 is not computed at all (``vox-256`` trains without
the GAN, so its discriminator never runs in the generator step).
"""

import tensorflow as tf

from fomm_lessons.dense_motion import invert_jacobians
from fomm_lessons.tps import ThinPlateSplineTransform, batched_matmul


def _weights_list(weights):
    """Per-layer weights as a list; a single number means one layer."""
    return list(weights) if isinstance(weights, (list, tuple)) else [weights]


def perceptual_loss(vgg, pyramid_generated, pyramid_real, weights):
    """Sum over scales and VGG19 layers of ``w_i * mean|VGG_i(generated) - VGG_i(real)|``.

    The real image's features are constants (``stop_gradient``), as in the original.
    """
    weights = _weights_list(weights)
    total = 0.0
    for scale, generated in pyramid_generated.items():
        features_generated = vgg(generated)
        features_real = vgg(pyramid_real[scale])
        for weight, fake, real in zip(weights, features_generated, features_real):
            if weight:
                fake, real = tf.cast(fake, tf.float32), tf.cast(real, tf.float32)  # mixed precision
                total += weight * tf.reduce_mean(tf.abs(fake - tf.stop_gradient(real)))
    return total


def generator_gan_loss(maps_generated, weight):
    """Least-squares GAN loss of the generator: ``w * mean((1 - D(G))^2)`` summed over scales."""
    return sum(weight * tf.reduce_mean(tf.square(1.0 - prediction)) for _, prediction in maps_generated.values())


def feature_matching_loss(maps_real, maps_generated, weights):
    """``sum_i w_i * mean|D_i(real) - D_i(generated)|`` over every discriminator block and scale."""
    weights = _weights_list(weights)
    total = 0.0
    for scale, (features_generated, _) in maps_generated.items():
        features_real, _ = maps_real[scale]
        for weight, real, fake in zip(weights, features_real, features_generated):
            if weight:
                total += weight * tf.reduce_mean(tf.abs(real - fake))
    return total


def discriminator_gan_loss(maps_real, maps_generated, weight):
    """Least-squares GAN loss of the discriminator: ``w * mean((1 - D(x))^2 + D(G)^2)`` per scale."""
    total = 0.0
    for scale, (_, prediction_generated) in maps_generated.items():
        _, prediction_real = maps_real[scale]
        total += weight * tf.reduce_mean(tf.square(1.0 - prediction_real) + tf.square(prediction_generated))
    return total


def equivariance_value_loss(kp_driving, kp_transformed, transform, weight):
    """Eq. 11: keypoints of a warped frame, warped back, equal the frame's keypoints.

    ``w * mean|p_k - T(p'_k)|`` where ``p'_k`` are the keypoints of ``T^-1``'s
    image, i.e. of ``transform.transform_frame(driving)``.
    """
    warped = transform.warp_coordinates(kp_transformed["value"])  # (B, K, 2)
    return weight * tf.reduce_mean(tf.abs(kp_driving["value"] - warped))


def equivariance_jacobian_loss(kp_driving, kp_transformed, transform, weight):
    """Eq. 12: ``w * mean|I - J_k^-1 (dT/dz(p'_k) J'_k)|``.

    The driving jacobians are inverted with a clamped determinant (see
    :func:`fomm_lessons.dense_motion.invert_jacobians`) so that a near-singular
    prediction early in training gives a large, finite loss instead of NaN.
    """
    jacobian_transformed = batched_matmul(transform.jacobian(kp_transformed["value"]), kp_transformed["jacobian"])
    value = batched_matmul(invert_jacobians(kp_driving["jacobian"]), jacobian_transformed)  # (B, K, 2, 2)
    return weight * tf.reduce_mean(tf.abs(tf.eye(2, dtype=value.dtype) - value))


def pixel_pyramid_loss(pyramid_generated, pyramid_real, weights):
    """An ablation of this project, not the paper's: L1 between the image pyramids, a weight per scale.

    The cheap stand-in for the perceptual loss where no trained VGG19 can be had;
    ``weights`` follow the order of the pyramid's scales (``train_params["scales"]``).
    """
    total = 0.0
    for weight, scale in zip(weights, pyramid_real):
        if weight != 0:
            total += weight * tf.reduce_mean(tf.abs(pyramid_generated[scale] - pyramid_real[scale]))
    return total


def keypoint_separation_loss(kp_value, sigma, weight):
    """An ablation from the unsupervised-landmark literature (Zhang et al. 2018), not in FOMM.

    ``weight * sum_{i != j} exp(-|k_i - k_j|^2 / (2 sigma^2))``, averaged over the
    batch, for keypoints ``kp_value`` (B, K, 2): it pushes keypoints apart when
    they come closer than about ``sigma`` (in [-1, 1] units).
    """
    offsets = kp_value[:, :, None, :] - kp_value[:, None, :, :]  # (B, K, K, 2)
    closeness = tf.exp(-tf.reduce_sum(tf.square(offsets), axis=-1) / (2.0 * sigma ** 2))  # (B, K, K)
    num_kp = tf.cast(tf.shape(kp_value)[1], closeness.dtype)
    off_diagonal = tf.reduce_sum(closeness, axis=[1, 2]) - num_kp  # the diagonal is exp(0) = 1
    return weight * tf.reduce_mean(off_diagonal)


def _stop(kp):
    return {key: tf.stop_gradient(value) for key, value in kp.items()}


def _cast(tree, dtype):
    return tf.nest.map_structure(lambda t: tf.cast(t, dtype), tree)


def generator_losses(models, source, driving, train_params, pyramid, vgg=None, transform=None,
                     training=True):
    """All losses of the generator + keypoint step, and the generated outputs.

    ``models`` has ``kp_detector``, ``generator`` and (when the GAN is used)
    ``discriminator`` (a :class:`~fomm_lessons.discriminator.MultiScaleDiscriminator`); ``pyramid`` is an
    :class:`~fomm_lessons.pyramid.ImagePyramid` over ``train_params["scales"]``;
    ``vgg`` a :class:`~fomm_lessons.perceptual.Vgg19Features` (needed when the
    perceptual weights are not all 0); ``transform`` the random TPS of the
    equivariance losses (drawn from ``transform_params`` when ``None``).
    Returns ``({name: scalar}, generated)``.
    """
    weights = train_params["loss_weights"]
    kp_source = models.kp_detector(source, training=training)
    kp_driving = models.kp_detector(driving, training=training)
    generated = models.generator(source, kp_source=kp_source, kp_driving=kp_driving, training=training)
    generated.update({"kp_source": kp_source, "kp_driving": kp_driving})
    prediction = tf.cast(generated["prediction"], tf.float32)
    losses = {}

    perceptual_weights = _weights_list(weights.get("perceptual", 0))
    pixel_weights = _weights_list(weights.get("pixel", 0))
    gan_weight = weights.get("generator_gan", 0)
    if sum(perceptual_weights) != 0 or sum(pixel_weights) != 0 or gan_weight != 0:
        pyramid_real = pyramid(driving)
        pyramid_generated = pyramid(prediction)
    if sum(perceptual_weights) != 0:
        if vgg is None:
            raise ValueError("perceptual loss weights are not all 0, but no vgg feature extractor was given")
        losses["perceptual"] = perceptual_loss(vgg, pyramid_generated, pyramid_real, perceptual_weights)
    if sum(pixel_weights) != 0:
        losses["pixel"] = pixel_pyramid_loss(pyramid_generated, pyramid_real, pixel_weights)
    separation_weight = weights.get("keypoint_separation", 0)
    if separation_weight != 0:
        sigma = train_params.get("separation_sigma", 0.1)
        values = tf.concat([kp_source["value"], kp_driving["value"]], axis=0)
        losses["keypoint_separation"] = keypoint_separation_loss(tf.cast(values, tf.float32), sigma,
                                                                 separation_weight)

    if gan_weight != 0:
        scales = [float(s) for s in models.discriminator.scales]
        kp = _stop(kp_driving)
        maps_generated = models.discriminator({s: pyramid_generated[s] for s in scales}, kp=kp, training=training)
        maps_real = models.discriminator({s: pyramid_real[s] for s in scales}, kp=kp, training=training)
        maps_generated, maps_real = _cast(maps_generated, tf.float32), _cast(maps_real, tf.float32)
        losses["gen_gan"] = generator_gan_loss(maps_generated, gan_weight)
        matching_weights = _weights_list(weights.get("feature_matching", 0))
        if sum(matching_weights) != 0:
            losses["feature_matching"] = feature_matching_loss(maps_real, maps_generated, matching_weights)

    value_weight = weights.get("equivariance_value", 0)
    jacobian_weight = weights.get("equivariance_jacobian", 0)
    if value_weight != 0 or jacobian_weight != 0:
        if transform is None:
            batch = tf.shape(driving)[0] if driving.shape[0] is None else driving.shape[0]
            transform = ThinPlateSplineTransform(batch, **train_params["transform_params"])
        transformed_frame = transform.transform_frame(driving)
        kp_transformed = _cast(models.kp_detector(transformed_frame, training=training), tf.float32)
        kp_driving32 = _cast(kp_driving, tf.float32)
        generated.update({"transformed_frame": transformed_frame, "transformed_kp": kp_transformed})
        if value_weight != 0:
            losses["equivariance_value"] = equivariance_value_loss(kp_driving32, kp_transformed, transform,
                                                                   value_weight)
        if jacobian_weight != 0:
            losses["equivariance_jacobian"] = equivariance_jacobian_loss(kp_driving32, kp_transformed, transform,
                                                                         jacobian_weight)
    return losses, generated


def discriminator_losses(discriminator, driving, generated, train_params, pyramid, training=True):
    """The discriminator step's loss: real driving frames against the detached prediction."""
    weight = train_params["loss_weights"].get("discriminator_gan", 0)
    scales = [float(s) for s in discriminator.scales]
    pyramid_real = pyramid(driving)
    pyramid_generated = pyramid(tf.stop_gradient(tf.cast(generated["prediction"], tf.float32)))
    kp = _stop(generated["kp_driving"])
    maps_generated = discriminator({s: pyramid_generated[s] for s in scales}, kp=kp, training=training)
    maps_real = discriminator({s: pyramid_real[s] for s in scales}, kp=kp, training=training)
    maps_generated, maps_real = _cast(maps_generated, tf.float32), _cast(maps_real, tf.float32)
    return {"disc_gan": discriminator_gan_loss(maps_real, maps_generated, weight)}
