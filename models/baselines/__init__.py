"""Baselines the federated churn/LTV model must beat: BG/NBD x Gamma-Gamma and gradient-boosted trees."""

from models.baselines.bgnbd import BetaGeoFitter
from models.baselines.gamma_gamma import GammaGammaFitter
from models.baselines.probabilistic import BGNBDGammaGamma
from models.baselines.trees import GradientBoostedTrees

__all__ = ["BetaGeoFitter", "GammaGammaFitter", "BGNBDGammaGamma", "GradientBoostedTrees"]
