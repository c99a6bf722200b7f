-- Optuna (POSTGRES_DB=optuna) and MLflow each keep an alembic_version table: one database each.
CREATE DATABASE mlflow OWNER presso;
