"""Saliency criteria: pure functions of (params, batches, loss_fn) returning score trees."""

from prospr_jax.criteria.force import force_saliency, iterative_snip_saliency
from prospr_jax.criteria.grasp import grasp_saliency
from prospr_jax.criteria.magnitude import magnitude_saliency
from prospr_jax.criteria.prospr import prospr_meta_gradient, prospr_saliency, prospr_saliency_streamed
from prospr_jax.criteria.random import random_saliency
from prospr_jax.criteria.registry import CRITERIA, ITERATIVE, get_criterion
from prospr_jax.criteria.snip import snip_saliency
from prospr_jax.criteria.synflow import synflow_saliency
from prospr_jax.criteria.three_sp import three_sp_saliency
