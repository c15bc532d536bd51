"""The golden cases: every preset and several compositions, each as
`SAMModel` options and the same point spelled out for the NumPy reference
(`reference.Config`). test_golden.py trains them step by step against the
reference; the distributed tests take their options from here."""

import keras
import numpy as np

from keras_sam import ProportionalRho
from support.reference import NORM_NAMES, Config

NO_NORM = ("w1", "b1", "w2", "b2")
# AE-SAM's policy, quicker than the paper's (delta 0.9, c 0): a mixture of
# ascents and plain steps within the 8 steps (the first steps always ascend
# while the running mean, from 0, catches up with ||g||^2).
AE = dict(policy_decay=0.5, policy_threshold=0.5)

# name -> (SAMModel options, the same point spelled out for the reference)
CASES = {
    "sam": (dict(method="sam", rho=0.1), Config(rho=0.1)),
    "sam_linf": (
        dict(method="sam", rho=0.01, norm="linf"),
        Config(rho=0.01, norm="linf"),
    ),
    "samon": (
        dict(method="samon", rho=0.1),
        Config(rho=0.1, perturbed=NORM_NAMES),
    ),
    "no_norm": (
        dict(method="sam", rho=0.1, perturb="no_norm"),
        Config(rho=0.1, perturbed=NO_NORM),
    ),
    "asam": (
        dict(method="asam", rho=0.5),
        Config(geometry="adaptive", rho=0.5),
    ),
    "asam_layerwise": (
        dict(method="asam", rho=0.05, adaptive="layerwise", eta=0.1),
        Config(geometry="adaptive", layerwise=True, eta=0.1, rho=0.05),
    ),
    "asam_linf": (
        dict(method="asam", rho=0.02, norm="linf"),
        Config(geometry="adaptive", norm="linf", rho=0.02),
    ),
    "asam_normalize_bias": (
        dict(method="asam", rho=0.5, normalize_bias=True, eta=0.05),
        Config(geometry="adaptive", normalize_bias=True, eta=0.05, rho=0.5),
    ),
    "fisher": (
        dict(method="fisher", rho=0.1),
        Config(geometry="fisher", eta=1.0, rho=0.1),
    ),
    "fsam": (dict(method="fsam", rho=0.5), Config(friendly=True, rho=0.5)),
    "fsam_options": (
        dict(method="fsam", rho=0.1, ema_decay=0.5, sigma=0.8),
        Config(friendly=True, ema_decay=0.5, sigma=0.8, rho=0.1),
    ),
    "fasam": (
        dict(method="fasam", rho=0.5),
        Config(geometry="adaptive", friendly=True, rho=0.5),
    ),
    "layersam": (
        dict(method="layersam", rho=0.1),
        Config(geometry="layer", layer_scale="global", rho=0.1),
    ),
    "layersam_layer": (
        dict(method="layersam", rho=0.02, layer_scale="layer"),
        Config(geometry="layer", layer_scale="layer", rho=0.02),
    ),
    "layersam_eq7": (
        dict(method="layersam", rho=0.05, layer_scale="eq7"),
        Config(geometry="layer", layer_scale="eq7", rho=0.05),
    ),
    "looksam": (
        dict(method="looksam", rho=0.1, k=3),
        Config(reuse="look", k=3, reuse_scale="stored", rho=0.1),
    ),
    "looksam_gradient": (
        dict(method="looksam", rho=0.1, k=3, alpha=0.5, reuse_scale="gradient"),
        Config(reuse="look", k=3, alpha=0.5, reuse_scale="gradient", rho=0.1),
    ),
    "looksam_relative": (
        dict(method="looksam", rho=0.1, k=3, reuse_scale="relative"),
        Config(reuse="look", k=3, reuse_scale="relative", rho=0.1),
    ),
    "looklayersam": (
        dict(method="looklayersam", rho=0.05, k=3),
        Config(
            geometry="layer",
            layer_scale="global",
            reuse="look",
            reuse_scale="relative",
            k=3,
            rho=0.05,
        ),
    ),
    "looklayersam_paper": (
        dict(
            method="looklayersam",
            rho=0.05,
            k=3,
            layer_scale="eq7",
            reuse_scale="gradient",
        ),
        Config(
            geometry="layer",
            reuse="look",
            k=3,
            layer_scale="eq7",
            reuse_scale="gradient",
            rho=0.05,
        ),
    ),
    "looklayersam_layer_relative": (
        dict(
            method="looklayersam",
            rho=0.02,
            k=3,
            layer_scale="layer",
            reuse_scale="relative",
        ),
        Config(
            geometry="layer",
            reuse="look",
            k=3,
            layer_scale="layer",
            reuse_scale="relative",
            rho=0.02,
        ),
    ),
    "samk": (
        dict(method="samk", rho=0.1, k=3),
        Config(reuse="every_k", k=3, rho=0.1),
    ),
    "start_step": (
        dict(method="sam", rho=0.1, start_step=3),
        Config(start_step=3, rho=0.1),
    ),
    "rho_schedule": (
        dict(
            method="sam",
            rho=keras.optimizers.schedules.ExponentialDecay(0.2, 2, 0.5),
        ),
        Config(rho=lambda t: 0.2 * 0.5 ** (t / 2)),
    ),
    "nusam": (
        dict(method="nusam", rho=0.1),
        Config(geometry="nuclear", rho=0.1),
    ),
    "nusam_power_iterations": (
        dict(method="nusam", rho=0.1, power_iterations=3),
        Config(geometry="nuclear", power_iterations=3, rho=0.1),
    ),
    "nusam_exact_svd": (
        dict(method="nusam", rho=0.1, power_iterations=50),
        Config(geometry="nuclear", exact_svd=True, rho=0.1),
    ),
    "nusam_norm": (
        dict(method="nusam_norm", rho=0.1),
        Config(geometry="nuclear_norm", rho=0.1),
    ),
    "nusam_norm_exact_svd": (
        dict(method="nusam_norm", rho=0.1, power_iterations=50),
        Config(geometry="nuclear_norm", exact_svd=True, rho=0.1),
    ),
    # Compositions: points no single paper defines.
    "look_nusam": (
        dict(method="nusam", rho=0.1, reuse="look", k=3),
        Config(
            geometry="nuclear", reuse="look", reuse_scale="stored", k=3, rho=0.1
        ),
    ),
    "look_samon": (
        dict(method="looksam", rho=0.1, perturb="norm", k=3),
        Config(
            reuse="look",
            reuse_scale="stored",
            k=3,
            perturbed=NORM_NAMES,
            rho=0.1,
        ),
    ),
    "friendly_layerwise_adaptive_on_norm": (
        dict(method="fasam", rho=0.1, adaptive="layerwise", perturb="norm"),
        Config(
            geometry="adaptive",
            layerwise=True,
            friendly=True,
            perturbed=NORM_NAMES,
            rho=0.1,
        ),
    ),
    "look_fsam_delayed": (
        dict(method="fsam", rho=0.1, reuse="look", k=2, start_step=2),
        Config(
            friendly=True,
            reuse="look",
            reuse_scale="stored",
            k=2,
            start_step=2,
            rho=0.1,
        ),
    ),
    "gsam": (
        dict(method="gsam", rho=0.1),
        Config(descent="gsam", gsam_alpha=0.6, rho=0.1),
    ),
    "gsam_alpha": (
        dict(method="gsam", rho=0.2, gsam_alpha=0.3),
        Config(descent="gsam", gsam_alpha=0.3, rho=0.2),
    ),
    "wsam": (
        dict(method="wsam", rho=0.1),
        Config(descent="wsam", gamma=0.97, decoupled=True, rho=0.1),
    ),
    "wsam_coupled": (
        dict(method="wsam", rho=0.1, gamma=0.7, decoupled=False),
        Config(descent="wsam", gamma=0.7, rho=0.1),
    ),
    "rst": (
        dict(method="sam", rho=0.1, policy="random"),
        Config(policy="random", rho=0.1),
    ),
    "rst_look_schedule_seed": (
        dict(
            method="looksam",
            rho=0.1,
            policy="random",
            ascent_probability=keras.optimizers.schedules.PolynomialDecay(
                0.8, 8, 0.2
            ),
            policy_seed=3,
        ),
        Config(
            reuse="look",
            reuse_scale="stored",
            policy="random",
            ascent_probability=lambda t: 0.8 - 0.6 * t / 8,
            policy_seed=3,
            rho=0.1,
        ),
    ),
    "msam": (
        dict(method="msam", rho=0.5),
        Config(direction="momentum", rho=0.5),
    ),
    "msam_options": (
        dict(method="msam", rho=0.2, ema_decay=0.5, start_step=2),
        Config(direction="momentum", ema_decay=0.5, start_step=2, rho=0.2),
    ),
    "msam_adaptive_on_norm": (
        dict(method="asam", rho=0.5, direction="momentum", perturb="norm"),
        Config(
            geometry="adaptive",
            direction="momentum",
            perturbed=NORM_NAMES,
            rho=0.5,
        ),
    ),
    "msam_layer_schedule": (
        dict(
            method="layersam",
            direction="momentum",
            rho=keras.optimizers.schedules.ExponentialDecay(0.2, 2, 0.5),
        ),
        Config(
            geometry="layer",
            layer_scale="global",
            direction="momentum",
            rho=lambda t: 0.2 * 0.5 ** (t / 2),
        ),
    ),
    "aesam": (
        dict(method="sam", rho=0.1, policy="adaptive", **AE),
        Config(policy="adaptive", rho=0.1, **AE),
    ),
    "aesam_threshold_schedule": (
        dict(
            method="sam",
            rho=0.1,
            policy="adaptive",
            policy_decay=0.5,
            policy_threshold=keras.optimizers.schedules.PolynomialDecay(
                1.0, 8, -1.0
            ),
        ),
        Config(
            policy="adaptive",
            policy_decay=0.5,
            policy_threshold=lambda t: 1.0 - 2.0 * t / 8,
            rho=0.1,
        ),
    ),
    "gsam_rho_follows_the_learning_rate": (
        dict(
            method="gsam",
            rho=ProportionalRho(
                keras.optimizers.schedules.CosineDecay(0.1, 8),
                lr_max=0.1,
                rho_max=0.2,
                rho_min=0.05,
            ),
        ),
        Config(
            descent="gsam",
            rho=lambda t: 0.05 + 0.15 * 0.5 * (1 + np.cos(np.pi * t / 8)),
        ),
    ),
    "samk_fisher_kernels": (
        dict(
            method="fisher",
            rho=0.1,
            reuse="every_k",
            k=2,
            perturb=lambda v: v.name == "kernel",
        ),
        Config(
            geometry="fisher",
            eta=1.0,
            reuse="every_k",
            k=2,
            perturbed=("w1", "w2"),
            rho=0.1,
        ),
    ),
    "gsam_samon": (
        dict(method="gsam", rho=0.1, perturb="norm"),
        Config(descent="gsam", perturbed=NORM_NAMES, rho=0.1),
    ),
    "wsam_nusam": (
        dict(method="nusam", rho=0.1, descent="wsam"),
        Config(
            geometry="nuclear",
            descent="wsam",
            gamma=0.97,
            decoupled=True,
            rho=0.1,
        ),
    ),
    "aelooksam": (
        dict(method="looksam", rho=0.1, policy="adaptive", **AE),
        Config(
            reuse="look", reuse_scale="stored", policy="adaptive", rho=0.1, **AE
        ),
    ),
    "look_gsam": (
        dict(method="looksam", rho=0.1, k=3, descent="gsam"),
        Config(
            reuse="look", reuse_scale="stored", k=3, descent="gsam", rho=0.1
        ),
    ),
    "ae_wsam_fsam_delayed": (
        dict(
            method="fsam",
            rho=0.1,
            start_step=2,
            descent="wsam",
            decoupled=False,
            policy="adaptive",
            **AE,
        ),
        Config(
            friendly=True,
            start_step=2,
            descent="wsam",
            gamma=0.97,
            policy="adaptive",
            rho=0.1,
            **AE,
        ),
    ),
}
