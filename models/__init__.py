"""Data, features, the multi-task churn/LTV model, its metrics and the baselines it must beat."""
